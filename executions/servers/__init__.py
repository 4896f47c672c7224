"""One adapter per ASGI server: what the app does better when it knows the server it runs on.

The app speaks plain ASGI everywhere. When it recognises the server behind a connection's
``send`` (daphne, uvicorn) in a version it is tested with, that server's adapter lends the
connection extras: frames written straight to the socket, the socket's flow control, the app's
limits and pings applied by the server itself, a 1012 close on shutdown. Any other server, a
version outside the tested range, or ``EXECUTIONS_SERVER_ADAPTERS = False`` gets the plain ASGI
adapter: every frame through the ASGI send, the app's own message-size check.

The adapters are the only modules that read a server's internals; the rest of the app imports
this package and never a server.
"""

from typing import Any

from executions import conf
from executions.servers import daphne, uvicorn
from executions.servers.base import ConnectionHooks, ServerSettings, innermost_send

__all__ = ["ConnectionHooks", "ServerSettings", "connection_hooks", "install_server_hooks"]

ADAPTERS = (daphne, uvicorn)


def _enabled() -> bool:
    return bool(conf.get("EXECUTIONS_SERVER_ADAPTERS"))


def server_settings() -> ServerSettings:
    """The app's settings that the servers apply to each WebSocket."""
    return ServerSettings(
        max_message_bytes=conf.get("EXECUTIONS_MAX_MESSAGE_BYTES"),
        ping_interval=conf.get("EXECUTIONS_PING_INTERVAL"),
        ping_timeout=conf.get("EXECUTIONS_PING_TIMEOUT"),
    )


def install_server_hooks() -> None:
    """Install the process-wide hooks of the server that is serving, if one is supported."""
    # Adapters on or off, tested version or not: tokens stay out of the servers' logs.
    if uvicorn.serving():
        uvicorn.redact_tokens_in_logs()
    if daphne.serving():
        daphne.redact_tokens_in_logs()
        daphne.bound_request_bodies()
    if not _enabled():
        return
    for adapter in ADAPTERS:
        if adapter.serving() and adapter.supported():
            adapter.install(server_settings())


def connection_hooks(send: Any) -> ConnectionHooks:
    """What the server behind `send` offers one connection; plain ASGI when it is not known."""
    if _enabled():
        for adapter in ADAPTERS:
            hooks = adapter.connection_hooks(send, server_settings())
            if hooks is not None:
                return hooks
    return ConnectionHooks(send=innermost_send(send))
