"""daphne's adapter: its WebSocket limits and pings from the app's settings, flow control,
frames written straight to the socket, and 1012 on shutdown.

Everything here reads daphne's, autobahn's or Twisted's internals, so it engages only for the
versions in TESTED (the others get the plain ASGI send, see executions.servers), except two
safety matters installed whenever daphne serves, as long as the methods they wrap exist: the
body limits (bound_request_bodies) and tokens out of the access log (redact_tokens_in_logs).

- Inbound size: daphne's limit defaults to 1 MiB, so daphne would buffer, and the application
  see, messages up to that size. The WebSocket factory's options are clamped to the app's
  limit: autobahn refuses a frame as soon as its header announces too many bytes, closing with
  1009 (message too big) and a reason.
- Protocol pings: daphne pings every WebSocket every ``ping_interval`` seconds and closes one
  that has not answered within ``ping_timeout``; both come from the app's settings.
- Form bodies: Twisted parses urlencoded and multipart POST bodies into ``request.args``, which
  daphne never reads (the application gets the raw body). Turned off: it cost every POST tens
  of microseconds, and a large multipart body would be parsed inside the reactor.
- Body limits: daphne reads a request's whole body (into a temporary file past 100 kB) before
  the application sees any of it, so the application's own limit (executions.asgi's
  RequestBodyLimit) would come after the disk had filled. Each HTTP/1.1 request gets the same
  limit as the application gives it (``request_body_limit``) as soon as its headers are in: a
  ``Content-Length`` over it is answered 413 at once and the connection closed without reading
  the body, and a chunked body is cut off, with the same 413, at the chunk that crosses it.
  Nothing past the limit is stored. (HTTP/2, which daphne speaks over TLS only, keeps daphne's
  own buffering; the application still refuses the body once it has it.)
- Shutdown: daphne cancels its applications at shutdown and lets the reactor drop their
  sockets, so clients see 1006 and cannot tell a restart from a crash. A hook sends each open
  WebSocket a 1012 close (service restart) first, which the ASGI close cannot carry under daphne.
"""

import asyncio
import functools
import io
import logging
import sys
import weakref
from functools import cache
from typing import Any
from urllib.parse import unquote

from executions.asgi import body_too_large, request_body_limit
from executions.outbox import wire_text_frame, write_frame
from executions.servers.base import (
    ConnectionHooks,
    ServerSettings,
    innermost_send,
    within_tested_versions,
)
from executions.servers.logs import redact_query_tokens

TESTED = {
    "daphne": ((4, 2), (4, 3)),
    "autobahn": ((22, 4), (27,)),
    "twisted": ((22, 4), (27,)),
}
_SIZE_OPTIONS = ("maxMessagePayloadSize", "maxFramePayloadSize")
# How long a closing connection waits for the client's close frame before dropping the socket.
# autobahn's 1 s is too short for a slow consumer, whose 4008 sits behind the frames it has not
# read yet: with a few seconds, a client that reads again learns why it was closed.
CLOSE_HANDSHAKE_SECONDS = 5
SHUTDOWN_GRACE_SECONDS = 1.0
RESTART_REASON = b"Server restarting: reconnect, and subscribe with since to resume."

_applied: ServerSettings | None = None
_open_protocols: "weakref.WeakSet[Any]" = weakref.WeakSet()


# daphne's command line, and its runserver: what starts daphne. (Not daphne.server, which the
# "daphne" app imports in every process that lists it in INSTALLED_APPS, uvicorn's included.)
logger = logging.getLogger("executions.servers")

_STARTERS = ("daphne.cli", "daphne.management.commands.runserver")


def serving() -> bool:
    """True in a process that daphne serves."""
    return any(name in sys.modules for name in _STARTERS)


@cache
def supported() -> bool:
    return within_tested_versions(TESTED)


def install(settings: ServerSettings) -> None:
    """Have daphne apply these settings to every WebSocket, and say 1012 at shutdown."""
    global _applied
    first_time = _applied is None
    _applied = settings
    if first_time:
        _clamp_websocket_options()
        _say_restart_at_shutdown()


_REDACTING = False


def redact_tokens_in_logs() -> None:
    """Have daphne's access log show ``?token=[redacted]`` (once, however often called).

    daphne writes HTTP requests with their query strings through ``Server.log_action``; this
    wraps that one method, whose signature has held since daphne 2, so it is installed
    whatever the adapter's state (install_server_hooks).
    """
    global _REDACTING
    from daphne.server import Server

    if _REDACTING or not callable(getattr(Server, "log_action", None)):
        return
    original = Server.log_action

    def log_action(self: Any, protocol: str, action: str, details: dict[str, Any]) -> Any:
        if isinstance(details.get("path"), str):
            details = {**details, "path": redact_query_tokens(details["path"])}
        return original(self, protocol, action, details)

    Server.log_action = log_action
    _REDACTING = True


def connection_hooks(send: Any, settings: ServerSettings) -> ConnectionHooks | None:
    """daphne's flow control and direct frames for this connection; None if not daphne's."""
    protocol = daphne_protocol(send)
    if protocol is None or not supported():
        return None
    _open_protocols.add(protocol)
    return ConnectionHooks(
        send=innermost_send(send),
        pressure=watch_transport(protocol),
        frames=SocketFrames.for_protocol(protocol),
    )


def daphne_protocol(send: Any) -> Any | None:
    """daphne's WebSocket protocol object behind `send` (its send is a partial over it)."""
    server_send = innermost_send(send)
    if (
        isinstance(server_send, functools.partial)
        and server_send.args
        and type(server_send.args[0]).__name__ == "WebSocketProtocol"
    ):
        return server_send.args[0]
    return None


# --- process-wide hooks ---------------------------------------------------------------------


def _clamp_websocket_options() -> None:
    from daphne.ws_protocol import WebSocketFactory

    original = WebSocketFactory.setProtocolOptions

    def set_protocol_options(self: Any, *args: Any, **options: Any) -> Any:
        chosen = _applied
        if chosen is not None:
            for name in _SIZE_OPTIONS:
                given = options.get(name)
                if given is not None:
                    limit = chosen.max_message_bytes
                    options[name] = limit if given <= 0 else min(given, limit)
            options["autoPingTimeout"] = chosen.ping_timeout
            options["closeHandshakeTimeout"] = CLOSE_HANDSHAKE_SECONDS
            # daphne's timeout checker reads the interval from its Server, every 2 s.
            self.server_class.ping_interval = chosen.ping_interval
        # Send the 1009 close frame (with its reason) instead of dropping the TCP connection.
        options.setdefault("failByDrop", False)
        return original(self, *args, **options)

    WebSocketFactory.setProtocolOptions = set_protocol_options


_BOUNDED = False


def bound_request_bodies() -> None:
    """Refuse bodies over their limit while daphne reads them (once, however often called).

    A limit is a safety matter, so this is installed whenever daphne serves, adapters on or
    off, tested version or not, as long as the hooks it overrides are there; without them the
    application's RequestBodyLimit still refuses the body, once daphne has read it.
    """
    global _BOUNDED
    if _BOUNDED:
        return
    from daphne.http_protocol import HTTPFactory, WebRequest

    hooks = ("gotLength", "handleContentChunk", "requestReceived")
    if not all(callable(getattr(WebRequest, hook, None)) for hook in hooks):
        logger.warning("daphne's request class lacks %s: bodies are bounded after reading", hooks)
        return
    _bounded_requests_without_form_parsing(HTTPFactory)
    _BOUNDED = True


def _bounded_requests_without_form_parsing(HTTPFactory: Any) -> None:
    request_factory = functools.partial(bounded_request_class(), parsePOSTFormSubmission=False)
    original = HTTPFactory.buildProtocol

    def build_protocol(self: Any, addr: Any) -> Any:
        protocol = original(self, addr)
        protocol.requestFactory = request_factory
        return protocol

    HTTPFactory.buildProtocol = build_protocol


@cache
def bounded_request_class() -> type:
    """daphne's WebRequest, refusing a body over its limit while Twisted reads it."""
    from daphne.http_protocol import WebRequest
    from twisted.web.http import HTTPChannel

    base: Any = WebRequest  # Twisted's Request declares few of the attributes used here

    class BoundedWebRequest(base):
        content: Any  # the body's file, made by gotLength
        _body_limit: int | None = None
        _body_received = 0
        _body_refused = False

        def gotLength(self, length: int | None) -> None:
            # Called once the headers are in, before Twisted makes the file the body goes to.
            if isinstance(self.channel, HTTPChannel):
                self._body_limit = _limit_for(self)
            limit = self._body_limit
            if limit is not None and length is not None and length > limit:
                self._refuse_body(limit)
                return
            # A chunked body (no length) gets the file for the largest body it may have.
            super().gotLength(limit if length is None else length)

        def handleContentChunk(self, data: bytes) -> None:
            if self._body_refused:
                return
            limit = self._body_limit
            if limit is not None:
                self._body_received += len(data)
                if self._body_received > limit:
                    self._refuse_body(limit)
                    return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if not self._body_refused:
                super().requestReceived(command, path, version)

        def _refuse_body(self, limit: int) -> None:
            """Answer 413 and close the connection; the application never sees the request."""
            self._body_refused = True
            # No "100 Continue" after the answer: Twisted sends it once this returns.
            self.requestHeaders.removeHeader(b"expect")
            if self.content is not None:
                self.content.close()
            self.content = io.BytesIO()
            headers, content = body_too_large(limit)
            head = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
            channel = self.channel
            status = b"HTTP/1.1 413 Content Too Large\r\n"
            channel.transport.write(b"%s%s\r\n%s" % (status, head, content))
            # Stops reading at once (the rest of the body is never received), sends the answer.
            channel.loseConnection()
            _log_refusal(channel, len(content))

    return BoundedWebRequest


def _limit_for(request: Any) -> int | None:
    """The application's limit for the request whose headers Twisted has just read."""
    channel = request.channel
    method = channel._command.decode("ascii", "replace")
    target = channel._path.split(b"?", 1)[0]
    path = unquote(target.decode("ascii", "replace"))
    # What daphne will give the application as root_path: strip it, as Django's handler does.
    root_path = request.channel.factory.server.root_path
    given = request.requestHeaders.getRawHeaders(b"daphne-root-path")
    if given:
        root_path = unquote(given[0].decode("ascii", "replace"))
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :] or "/"
    content_type = (request.requestHeaders.getRawHeaders(b"content-type") or [b""])[0]
    return request_body_limit(method, path, content_type.decode("latin-1"))


def _log_refusal(channel: Any, size: int) -> None:
    """A line in daphne's access log, as for any answered request."""
    peer = channel.transport.getPeer()
    channel.factory.server.log_action(
        "http",
        "complete",
        {
            "path": channel._path.decode("ascii", "replace"),
            "status": 413,
            "method": channel._command.decode("ascii", "replace"),
            "client": f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
            "time_taken": 0.0,
            "size": size,
        },
    )


def _say_restart_at_shutdown() -> None:
    from twisted.internet import reactor, task

    def before_shutdown() -> Any:
        if tell_clients_to_reconnect():
            return task.deferLater(reactor, SHUTDOWN_GRACE_SECONDS, lambda: None)
        return None

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)  # type: ignore[arg-type]


def tell_clients_to_reconnect() -> int:
    """Send 1012 to every open WebSocket of this process; return how many were told."""
    told = 0
    for protocol in list(_open_protocols):
        if getattr(protocol, "state", None) == getattr(protocol, "STATE_OPEN", object()):
            protocol.sendCloseFrame(code=1012, reasonUtf8=RESTART_REASON, isReply=False)
            told += 1
    return told


# --- one connection -------------------------------------------------------------------------


class TransportPressure:
    """A Twisted push producer: daphne's transport pauses it while its write buffer is full.

    daphne's send never waits for the client, so without this a client that stops reading would
    make the server buffer every frame. Twisted calls pauseProducing once its buffer passes 64
    KiB and resumeProducing once it drains.
    """

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()

    def pauseProducing(self) -> None:
        self.writable.clear()

    def resumeProducing(self) -> None:
        self.writable.set()

    def stopProducing(self) -> None:
        self.writable.set()


def watch_transport(protocol: Any) -> TransportPressure | None:
    """A TransportPressure registered on the protocol's Twisted transport."""
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "registerProducer"):
        return None
    pressure = TransportPressure()
    existing = getattr(transport, "producer", None)
    if existing is not None:
        # Twisted's HTTPChannel, which daphne upgraded to a WebSocket, is still registered:
        # keep telling it (it stops reading the socket while the buffer is full) and us too.
        transport.unregisterProducer()
        transport.registerProducer(_BothProducers(existing, pressure), True)
    else:
        transport.registerProducer(pressure, True)
    return pressure


class _BothProducers:
    """Forwards Twisted's flow-control calls to two producers."""

    def __init__(self, first: Any, second: TransportPressure) -> None:
        self.first = first
        self.second = second

    def pauseProducing(self) -> None:
        self.first.pauseProducing()
        self.second.pauseProducing()

    def resumeProducing(self) -> None:
        self.first.resumeProducing()
        self.second.resumeProducing()

    def stopProducing(self) -> None:
        self.first.stopProducing()
        self.second.stopProducing()


class SocketFrames:
    """Writes text frames straight to a daphne connection's socket, ahead of Twisted and autobahn.

    Under daphne each frame otherwise goes through the ASGI send, autobahn's framing (which
    formats debug-log arguments for every frame) and Twisted's write buffer, which registers the
    socket with the event loop and writes it on a later turn, then unregisters it: several
    microseconds of Python and two epoll calls per frame, and a frame that waits for the loop.
    Here a frame is one non-blocking send, as asyncio's own transports do. Whatever the socket
    does not take right away goes to Twisted's buffer, and while that buffer holds anything
    every frame goes there too, so bytes always leave in order and Twisted's flow control (the
    TransportPressure) still sees a client that stops reading.

    Only for plain TCP: TLS gets None from ``for_protocol``, and a connection that negotiated
    compression is refused at each send; those keep the ASGI send.
    """

    __slots__ = ("_protocol", "_socket", "_transport")

    def __init__(self, protocol: Any, transport: Any) -> None:
        self._protocol = protocol
        self._transport = transport
        self._socket = transport.socket

    @classmethod
    def for_protocol(cls, protocol: Any) -> "SocketFrames | None":
        transport = getattr(protocol, "transport", None)
        if transport is None or not hasattr(protocol, "_perMessageCompress"):
            return None
        from twisted.internet.tcp import Server

        if type(transport) is not Server or transport.TLS:
            return None
        return cls(protocol, transport)

    def send_text(self, text: str) -> bool:
        """Send one text frame; False when the WebSocket is no longer open (nothing sent)."""
        protocol = self._protocol
        # Compression is settled at the handshake, after this object was made: look each time.
        if protocol.state != protocol.STATE_OPEN or protocol._perMessageCompress is not None:
            return False
        write_frame(self, wire_text_frame(text))
        return True

    def write_now(self, data: bytes) -> None:
        protocol, transport = self._protocol, self._transport
        # Bytes still waiting in autobahn's queue or Twisted's buffer go first.
        if (
            protocol.send_queue
            or transport._tempDataLen
            or len(transport.dataBuffer) > transport.offset
        ):
            transport.write(data)
            return
        try:
            sent = self._socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted meet the error on its own write and close the connection its way.
            sent = 0
        if sent < len(data):
            transport.write(data[sent:])
