"""What stands between the fan-out and one socket: a bounded backlog, and the socket's pressure.

The fan-out never waits on a socket: it appends to the connection's Backlog and moves on. The
connection sends from its backlog at the client's pace; a backlog past its byte limit marks the
connection as too slow, and it is closed instead of growing without bound.
"""

import asyncio
import functools
from collections import deque
from typing import Any, Protocol, cast

from websockets.protocol import State

from executions.protocol import CACHED_FRAME_LIMIT, CACHED_FRAMES


class Backlog:
    """Events waiting to be sent to one connection, bounded by the size of their frames."""

    __slots__ = ("_events", "_waiter", "max_bytes", "overflowed", "size")

    def __init__(self, max_bytes: int) -> None:
        self._events: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.max_bytes = max_bytes
        self.overflowed = False
        self.size = 0

    def __bool__(self) -> bool:
        return bool(self._events)

    def put(self, event: dict[str, Any]) -> None:
        if self.overflowed:
            return
        self.size += len(event["frame"])
        if self.size > self.max_bytes:
            self.overflowed = True
            self._events.clear()
        else:
            self._events.append(event)
        self._wake()

    def pop(self) -> dict[str, Any]:
        event = self._events.popleft()
        self.size -= len(event["frame"])
        return event

    async def wait(self) -> None:
        """Wait until an event arrives, the backlog overflows, or wake() is called."""
        if self._events or self.overflowed:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def wake(self, *_: object) -> None:
        """End a wait(); also usable as a future's done callback."""
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


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


def innermost_send(send: Any) -> Any:
    """The server's own send callable, under channels' session wrapper if there is one."""
    return getattr(getattr(send, "__self__", None), "real_send", send)


def daphne_protocol(send: Any) -> Any | None:
    """daphne's WebSocket protocol object behind `send` (its send is a partial over it)."""
    server_send = innermost_send(send)
    if isinstance(server_send, functools.partial) and server_send.args:
        return server_send.args[0]
    return None


class WritableFlag(Protocol):
    """What the consumer watches: set while the connection's socket takes more bytes."""

    writable: asyncio.Event


def watch_transport(send: Any) -> WritableFlag | None:
    """The flag that tells whether the socket behind `send` takes more bytes; None if unknown.

    Under daphne, a TransportPressure registered on Twisted's transport. Under uvicorn, its
    websockets-sansio protocol, whose own ``writable`` event its transport clears and sets.
    """
    uvicorn_protocol = getattr(innermost_send(send), "__self__", None)
    if _is_uvicorn_websocket(uvicorn_protocol):
        return cast(WritableFlag, uvicorn_protocol)
    transport = getattr(daphne_protocol(send), "transport", None)
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

    Only for plain TCP: TLS and other servers get None from ``for_send``, and a connection that
    negotiated compression is refused at each send; those keep the ASGI send.
    """

    __slots__ = ("_protocol", "_socket", "_transport")

    def __init__(self, protocol: Any, transport: Any) -> None:
        self._protocol = protocol
        self._transport = transport
        self._socket = transport.socket

    @classmethod
    def for_send(cls, send: Any) -> "SocketFrames | None":
        protocol = daphne_protocol(send)
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
        frame = wire_text_frame(text)
        transport = self._transport
        # Bytes still waiting in autobahn's queue or Twisted's buffer go first.
        if (
            protocol.send_queue
            or transport._tempDataLen
            or len(transport.dataBuffer) > transport.offset
        ):
            transport.write(frame)
            return True
        try:
            sent = self._socket.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted meet the error on its own write and close the connection its way.
            sent = 0
        if sent < len(frame):
            transport.write(frame[sent:])
        return True


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

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    @classmethod
    def for_send(cls, send: Any) -> "TransportFrames | None":
        protocol = getattr(innermost_send(send), "__self__", None)
        return cls(protocol) if _is_uvicorn_websocket(protocol) else None

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
            or connection.state is not State.OPEN
            or connection.extensions
        ):
            return False
        protocol.transport.write(wire_text_frame(text))
        return True


def _is_uvicorn_websocket(protocol: object) -> bool:
    return (
        type(protocol).__name__ == "WebSocketsSansIOProtocol"
        and hasattr(protocol, "conn")
        and isinstance(getattr(protocol, "writable", None), asyncio.Event)
    )


def direct_frames(send: Any) -> "SocketFrames | TransportFrames | None":
    """The fastest way to write this connection's frames, or None for the ASGI send only."""
    return SocketFrames.for_send(send) or TransportFrames.for_send(send)


def wire_text_frame(text: str) -> bytes:
    """The bytes of a text frame; the same text object gets the same bytes, built once."""
    if len(text) > CACHED_FRAME_LIMIT:
        return text_frame(text.encode())
    return _cached_text_frame(text)


@functools.lru_cache(maxsize=CACHED_FRAMES)
def _cached_text_frame(text: str) -> bytes:
    return text_frame(text.encode())


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked WebSocket text frame (RFC 6455, 5.2), as a server sends it."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + length.to_bytes(8, "big") + payload
