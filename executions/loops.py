"""One object per event loop.

asyncio's locks and semaphores belong to the loop that first waits on them, and a process may
run several loops (the server's, and one per async_to_sync call from a thread outside it).
"""

import asyncio
import weakref
from collections.abc import Callable


class PerLoop[T]:
    """The running loop's own T, made by `factory` on first use (and dropped with the loop,
    unless the T itself holds on to it, as a lock that was waited on does)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._made: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        made = self._made.get(loop)
        if made is None:
            made = self._made[loop] = self._factory()
        return made
