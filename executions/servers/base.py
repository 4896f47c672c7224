"""What every server adapter offers, and the plain ASGI fallback that needs no adapter at all."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

logger = logging.getLogger("executions.servers")

Send = Callable[[dict[str, Any]], Awaitable[None]]


class WritableFlag(Protocol):
    """Set while the connection's socket takes more bytes; cleared while its buffer is full."""

    writable: asyncio.Event


class DirectFrames(Protocol):
    """Writes text frames straight to a connection's socket, ahead of the server's ASGI send."""

    def send_text(self, text: str) -> bool:
        """Send one text frame; False when it has to go through the ASGI send instead."""
        ...


@dataclass(frozen=True, slots=True)
class ConnectionHooks:
    """What one connection gets from its server: at least a send, perhaps more."""

    send: Send  # the server's own send, under any wrapper
    pressure: WritableFlag | None = None  # None: the send itself waits for the client
    frames: DirectFrames | None = None  # None: every frame through `send`


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The app's WebSocket settings that a server can apply itself."""

    max_message_bytes: int
    ping_interval: float
    ping_timeout: float


def innermost_send(send: Any) -> Any:
    """The server's own send callable, under channels' session wrapper if there is one."""
    return getattr(getattr(send, "__self__", None), "real_send", send)


def _release(distribution: str) -> tuple[int, ...] | None:
    try:
        text = version(distribution)
    except PackageNotFoundError:
        return None
    numbers: list[int] = []
    for part in text.split(".")[:3]:
        digits = "".join(char for char in part if char.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def within_tested_versions(ranges: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> bool:
    """True when every distribution is installed in its [lowest, below) range; logs why not."""
    for distribution, (lowest, below) in ranges.items():
        release = _release(distribution)
        if release is None or not lowest <= release < below:
            logger.warning(
                "%s %s is outside the versions the executions app is tested with (%s to below "
                "%s): its server adapter is off, and connections use the plain ASGI send.",
                distribution,
                ".".join(map(str, release)) if release else "(not installed)",
                ".".join(map(str, lowest)),
                ".".join(map(str, below)),
            )
            return False
    return True
