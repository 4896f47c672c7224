"""What stands between the fan-out and one socket: a bounded backlog, and the frames' bytes.

The fan-out never waits on a socket: it appends to the connection's Backlog and moves on. The
connection sends from its backlog at the client's pace; a backlog past its byte limit marks the
connection as too slow, and it is closed instead of growing without bound. How a frame reaches
the socket, and how the socket's pressure is seen, is the server adapter's part
(executions.servers).
"""

import asyncio
import contextlib
import functools
import logging
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any, Final, Protocol

from executions.protocol import CACHED_FRAME_LIMIT, CACHED_FRAMES

logger = logging.getLogger(__name__)


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


class FrameWriter(Protocol):
    """A server adapter's way of putting a connection's frame bytes on its socket."""

    def write_now(self, data: bytes) -> None:
        """Write at once (or queue behind what the socket has not taken yet), in order."""
        ...


# A socket's held frames are written once they reach this many bytes, so that a client that
# stopped reading meets the server's flow control (its write buffer's high-water mark, 64 KiB
# under daphne and uvicorn) within a hand-out, not only after it.
HELD_BYTES_PER_SOCKET: Final = 64 * 1024


class _Pending:
    """One socket's frames held during a hand-out, in the order they came."""

    __slots__ = ("frames", "size")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.size = 0

    def take(self) -> bytes:
        frames, self.frames, self.size = self.frames, [], 0
        return frames[0] if len(frames) == 1 else b"".join(frames)


class _Held(threading.local):
    # While one thread hands events out: what each writer has waiting.
    frames: dict[FrameWriter, _Pending] | None = None


_held = _Held()


@contextlib.contextmanager
def frames_sent_together() -> Iterator[None]:
    """Hold what server adapters write straight to sockets while this runs, then send each
    socket's frames as one write.

    For one synchronous hand-out of several events: a subscriber then gets a batch in one send
    instead of one per event (a system call and a wake-up of the client each). The events of
    one socket stay in order, and it never spans an await, so nothing else writes in between
    and no frame waits for more than the hand-out itself. Nested uses send at the outermost.
    A socket whose held frames reach HELD_BYTES_PER_SOCKET gets them at once.
    """
    if _held.frames is not None:
        yield
        return
    _held.frames = {}
    try:
        yield
    finally:
        held, _held.frames = _held.frames, None
        for writer, pending in held.items():
            if not pending.frames:
                continue
            try:
                writer.write_now(pending.take())
            except Exception:
                # One broken socket must not keep the others' frames.
                logger.exception("writing held frames to a socket failed")


def write_frame(writer: FrameWriter, frame: bytes) -> None:
    """Write a frame's bytes now, or with the others of its socket at the end of the hand-out
    (``frames_sent_together``) in progress."""
    held = _held.frames
    if held is None:
        writer.write_now(frame)
        return
    pending = held.get(writer)
    if pending is None:
        pending = held[writer] = _Pending()
    pending.frames.append(frame)
    pending.size += len(frame)
    if pending.size >= HELD_BYTES_PER_SOCKET:
        writer.write_now(pending.take())
