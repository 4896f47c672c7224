"""ASGI entry point of the demo project, wired as any project that installs the app."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from executions.asgi import get_asgi_application

application = get_asgi_application()
