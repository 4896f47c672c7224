"""The demo project's settings with the server adapters off: every server gets plain ASGI."""

from project.settings import *  # noqa: F403

EXECUTIONS_SERVER_ADAPTERS = False
