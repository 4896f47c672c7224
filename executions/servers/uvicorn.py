"""uvicorn's adapter: the app's limits and pings on its websockets-sansio protocol, its flow
control, and frames written straight to its transport.

uvicorn sends 1012 to every WebSocket at shutdown by itself. Everything here reads attributes of
uvicorn's ``WebSocketsSansIOProtocol`` and of the ``websockets`` connection inside it, so it
engages only for the versions in TESTED (the others get the plain ASGI send); except the log
filter, which reads no internals and is installed whatever the version (install_server_hooks).

uvicorn logs each WebSocket handshake with its path and query string (``"WebSocket
/ws?token=..." [accepted]`` on ``uvicorn.error``) and each HTTP request likewise on
``uvicorn.access``: the filter replaces the value of every ``token`` query parameter in those
records with ``[redacted]`` and leaves the rest of the line as it was.
"""

import asyncio
import logging
import sys
from collections.abc import Mapping
from functools import cache
from typing import Any

from executions.outbox import wire_text_frame, write_frame
from executions.servers.base import (
    ConnectionHooks,
    ServerSettings,
    innermost_send,
    within_tested_versions,
)
from executions.servers.logs import redact_query_tokens, redacted

TESTED = {
    "uvicorn": ((0, 55), (0, 56)),
    "websockets": ((17,), (18,)),
}


def serving() -> bool:
    """True in a process that uvicorn serves."""
    return "uvicorn.server" in sys.modules


@cache
def supported() -> bool:
    return within_tested_versions(TESTED)


def install(settings: ServerSettings) -> None:
    """Keep tokens out of uvicorn's logs; its settings are applied per connection."""
    redact_tokens_in_logs()


# --- tokens out of the logs -----------------------------------------------------------------

LOGGERS = ("uvicorn.access", "uvicorn.error")


class RedactTokens(logging.Filter):
    """Rewrites a record's message and arguments so that no token is formatted from them.

    The arguments keep their number and order: uvicorn's access formatter unpacks them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redacted(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: redacted(arg) for key, arg in record.args.items()}
        return True


_REDACT_TOKENS = RedactTokens()


def redact_tokens_in_logs() -> None:
    """Install the filter on uvicorn's two loggers (once, however often this is called)."""
    for name in LOGGERS:
        logging.getLogger(name).addFilter(_REDACT_TOKENS)


def connection_hooks(send: Any, settings: ServerSettings) -> ConnectionHooks | None:
    """uvicorn's flow control and direct frames for this connection; None if not uvicorn's."""
    server_send = innermost_send(send)
    protocol = getattr(server_send, "__self__", None)
    if not _is_sansio_websocket(protocol) or not supported():
        return None
    _apply(protocol, settings)
    return ConnectionHooks(send=server_send, pressure=protocol, frames=TransportFrames(protocol))


def _is_sansio_websocket(protocol: object) -> bool:
    return (
        type(protocol).__name__ == "WebSocketsSansIOProtocol"
        and hasattr(protocol, "conn")
        and isinstance(getattr(protocol, "writable", None), asyncio.Event)
    )


def _apply(protocol: Any, settings: ServerSettings) -> None:
    """The app's message limit and pings, before the handshake completes (pings start there)."""
    if protocol.handshake_complete:
        return
    # websockets refuses a larger message as it parses the frame header: 1009, as under daphne.
    protocol.conn.max_message_size = settings.max_message_bytes
    protocol.ping_interval = settings.ping_interval
    protocol.ping_timeout = settings.ping_timeout


class TransportFrames:
    """Writes text frames straight to a uvicorn connection's transport, ahead of its ASGI send.

    uvicorn's send (its websockets-sansio protocol) frames each message through a protocol
    object and must be awaited. This writes the same bytes to the same asyncio transport, which
    sends them at once or buffers them in order, so the fan-out can send without waking the
    connection's task. Once the transport has paused its writer (its buffer is past the high
    water mark) this refuses, and the frame takes the ASGI send, which waits for the buffer to
    drain: the flow control stays uvicorn's. Refuses too when an extension (permessage-deflate)
    was negotiated, since those frames must be compressed.
    """

    __slots__ = ("_open", "_protocol")

    def __init__(self, protocol: Any) -> None:
        from websockets.protocol import State

        self._protocol = protocol
        self._open = State.OPEN

    def send_text(self, text: str) -> bool:
        """Send one text frame; False when it has to go through the ASGI send instead."""
        protocol = self._protocol
        connection = protocol.conn
        if (
            not protocol.handshake_complete
            or protocol.close_sent
            or protocol.disconnected
            or not protocol.writable.is_set()
            or protocol.transport.is_closing()
            or connection.state is not self._open
            or connection.extensions
        ):
            return False
        write_frame(self, wire_text_frame(text))
        return True

    def write_now(self, data: bytes) -> None:
        self._protocol.transport.write(data)
