"""ASGI entry point: HTTP through Django, WebSockets through the executions app."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Django must be set up before anything imports models, so this comes first.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from executions import conf  # noqa: E402
from executions.auth import websocket_auth_stack  # noqa: E402
from executions.daphne_limits import DaphneWebSocketSettings, configure_daphne  # noqa: E402
from executions.ingest import IngestEndpoint  # noqa: E402
from executions.routing import websocket_urlpatterns  # noqa: E402
from executions.shutdown import install_daphne_shutdown_hook  # noqa: E402

configure_daphne(
    DaphneWebSocketSettings(
        max_message_bytes=conf.get("EXECUTIONS_MAX_MESSAGE_BYTES"),
        ping_interval=conf.get("EXECUTIONS_PING_INTERVAL"),
        ping_timeout=conf.get("EXECUTIONS_PING_TIMEOUT"),
    )
)
install_daphne_shutdown_hook()

# Plain daphne serves no static files; in development the admin and the API docs need them.
django_http = ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app
# The publishing hot path answers before Django's request machinery; see executions.ingest.
http_app = IngestEndpoint(django_http)

application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": websocket_auth_stack(URLRouter(websocket_urlpatterns)),
    }
)

# Everything loaded so far lives as long as the process: keep it out of the collector's full
# passes, which otherwise walk all of Django and stall the event loop for tens of milliseconds.
gc.freeze()
