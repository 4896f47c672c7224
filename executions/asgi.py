"""The whole ASGI application of a site that installs the app, in one call.

A project's ``asgi.py``::

    import os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from executions.asgi import get_asgi_application
    application = get_asgi_application()
"""

import gc
from typing import Any

ASGIApp = Any


def get_asgi_application(*, websocket_fallback: ASGIApp | None = None) -> ASGIApp:
    """Set Django up and return the site's application: HTTP and the executions WebSockets.

    - HTTP: Django's application, behind the ingest fast path (executions.ingest), and under
      ``DEBUG`` behind the static files handler (the admin's and the API docs' assets).
    - WebSocket: origin check, session and token authentication, then the consumer, at the
      path where the URLconf mounts ``executions.urls`` (or ``executions.urls.websocket``).
      Other WebSocket paths go to `websocket_fallback`, a project's own channels app, if given.
    - The serving server's hooks (executions.servers): under daphne, the app's message limit
      (1009), pings and a 1012 close on SIGTERM; under uvicorn, the limit and pings.

    Ends with ``gc.freeze()``: everything loaded so far lives as long as the process, and the
    collector's full passes would otherwise walk all of Django and stall the event loop for
    tens of milliseconds.
    """
    from django.core.asgi import get_asgi_application as get_django_application

    # Django must be set up before anything imports models, so this comes first.
    django_application = get_django_application()

    from channels.routing import ProtocolTypeRouter

    from executions.auth import websocket_auth_stack
    from executions.ingest import IngestEndpoint
    from executions.routing import WebSocketRouter
    from executions.servers import install_server_hooks

    install_server_hooks()
    application = ProtocolTypeRouter(
        {
            "http": IngestEndpoint(_with_static_files(django_application)),
            "websocket": websocket_auth_stack(WebSocketRouter(fallback=websocket_fallback)),
        }
    )
    gc.freeze()
    return application


def _with_static_files(application: ASGIApp) -> ASGIApp:
    """Under DEBUG, serve static files as runserver does; daphne and uvicorn serve none."""
    from django.apps import apps
    from django.conf import settings

    if not settings.DEBUG or not apps.is_installed("django.contrib.staticfiles"):
        return application
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    return ASGIStaticFilesHandler(application)
