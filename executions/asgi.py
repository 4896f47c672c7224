"""The whole ASGI application of a site that installs the app, in one call.

A project's ``asgi.py``::

    import os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from executions.asgi import get_asgi_application
    application = get_asgi_application()
"""

import gc
import json
from typing import Any

ASGIApp = Any
Scope = dict[str, Any]
Message = dict[str, Any]


def get_asgi_application(*, websocket_fallback: ASGIApp | None = None) -> ASGIApp:
    """Set Django up and return the site's application: HTTP and the executions WebSockets.

    - HTTP: Django's application, behind the ingest fast path (executions.ingest), and under
      ``DEBUG`` behind the static files handler (the admin's and the API docs' assets); all of
      it behind RequestBodyLimit, which refuses oversized bodies with 413.
    - WebSocket: origin check, session and token authentication, then the consumer, at the
      path where the URLconf mounts ``executions.urls`` (or ``executions.urls.websocket``).
      Other WebSocket paths go to `websocket_fallback`, a project's own channels app, if given.
    - The serving server's hooks (executions.servers): under daphne, the app's message limit
      (1009), pings, a 1012 close on SIGTERM and the body limits applied before daphne buffers
      a body; under uvicorn, the message limit and pings.

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
            # The ingest endpoint checks its token before any body limit, and bounds its own body.
            "http": IngestEndpoint(RequestBodyLimit(_with_static_files(django_application))),
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


# --- request bodies -------------------------------------------------------------------------

MULTIPART_FORM = "multipart/form-data"


def request_body_limit(method: str, path: str, content_type: str) -> int | None:
    """The most bytes a request's body may hold, from its method, path and ``Content-Type``.

    `path` is the path the URLconf sees (below any root path). ``POST`` to the ingest route:
    ``EXECUTIONS_MAX_INGEST_BYTES``. A ``multipart/form-data`` body (file uploads, whose files
    Django does not count against ``DATA_UPLOAD_MAX_MEMORY_SIZE``):
    ``EXECUTIONS_MAX_UPLOAD_BYTES``. Any other body: ``DATA_UPLOAD_MAX_MEMORY_SIZE``. None
    means no limit (the last two settings can be None).
    """
    from django.conf import settings

    from executions import conf
    from executions.ingest import resolves_to_ingest

    if method == "POST" and resolves_to_ingest(path):
        return int(conf.get("EXECUTIONS_MAX_INGEST_BYTES"))
    if content_type.lstrip().lower().startswith(MULTIPART_FORM):
        upload_limit: int | None = conf.get("EXECUTIONS_MAX_UPLOAD_BYTES")
        return upload_limit
    data_limit: int | None = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return data_limit


def body_too_large(limit: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of the 413 answer, the same whoever sends it (app or server hook).

    ``Connection: close``: the rest of the body is never read, so the connection cannot carry
    another request.
    """
    from executions.errors import body_too_large_message

    content = json.dumps({"error": body_too_large_message(limit)}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"connection", b"close"),
    ]
    return headers, content


class RequestBodyLimit:
    """ASGI middleware: a body over its limit (``request_body_limit``) gets a 413, unread.

    A ``Content-Length`` over the limit is answered before a byte of the body is received. A
    body without one (chunked) is counted as the application receives it: at the chunk that
    crosses the limit the application is told the client went away (Django then drops the
    request) and the client gets the 413. Either way nothing beyond the limit is read, so no
    server buffers it and no temporary file grows past it. Plain ASGI: it bounds bodies under
    every server. (daphne reads a whole body before the application sees any of it, so its
    adapter applies the same limits while daphne reads; see executions.servers.daphne.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from executions.scope import declares_more_than, header, path_info

        limit = request_body_limit(
            scope["method"], path_info(scope), header(scope, b"content-type")
        )
        if limit is None:
            await self.app(scope, receive, send)
            return
        if declares_more_than(header(scope, b"content-length"), limit):
            await _send_too_large(send, limit)
            return
        await _BoundedExchange(limit, receive, send).run(self.app, scope)


class _BoundedExchange:
    """One request whose body is counted as the application receives it."""

    def __init__(self, limit: int, receive: Any, send: Any) -> None:
        self.limit = limit
        self.received = 0
        self.response_started = False
        self.refused = False
        self._receive = receive
        self._send = send

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        await app(scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message: Message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refused = True
                if not self.response_started:
                    self.response_started = True
                    await _send_too_large(self._send, self.limit)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return  # the client has its 413 (or its connection is being dropped)
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)


async def _send_too_large(send: Any, limit: int) -> None:
    headers, content = body_too_large(limit)
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": content})
