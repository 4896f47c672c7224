"""ASGI entry point: HTTP through Django, WebSockets through the executions app."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Django must be set up before anything imports models, so this comes first.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from executions import conf  # noqa: E402
from executions.auth import websocket_auth_stack  # noqa: E402
from executions.daphne_limits import limit_daphne_messages  # noqa: E402
from executions.routing import websocket_urlpatterns  # noqa: E402

limit_daphne_messages(conf.get("EXECUTIONS_MAX_MESSAGE_BYTES"))

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_auth_stack(URLRouter(websocket_urlpatterns)),
    }
)
