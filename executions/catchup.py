"""Catching a stream up from the history: what the WebSocket consumer and the SSE endpoint share.

A stream (a subscription, an SSE response) joins the fan-out first, then reads the graph's
position: whatever is published from then on arrives live. It replays the retained events after
the client's number up to that head, then follows the live events, dropping numbers it has sent
and reading back from the history any number the layer skipped (`missing_before`).
"""

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async

from executions import history
from executions.history import StoredEvent

# Events read from the database per query while replaying history.
REPLAY_PAGE_SIZE = 500


async def on_shared_thread[T](func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run database code on the process's shared database thread, from any context.

    Inside a Django request (the SSE view) a thread-sensitive call would go to that request's
    own thread, which lives, with its database connection, as long as the stream: a thread and
    a connection per open stream. Run from an empty context, the call takes the thread every
    WebSocket connection's database work shares instead.
    """
    call = database_sync_to_async(func)(*args, **kwargs)
    return await asyncio.create_task(call, context=contextvars.Context())


async def replay_pages(
    graph_id: str, after: int, until: int, ready: Callable[[], Awaitable[bool]] | None = None
) -> AsyncIterator[list[StoredEvent]]:
    """The retained events of a graph with after < seq <= until, a page at a time, in order.

    Before each page, `ready` (when given) may wait for the client and end the replay (False).
    """
    while after < until and (ready is None or await ready()):
        page = await on_shared_thread(
            history.events_after, graph_id, after, REPLAY_PAGE_SIZE, until=until
        )
        if not page:
            return
        yield page
        after = page[-1].seq


async def missing_before(graph_id: str, delivered: int, seq: int) -> list[StoredEvent]:
    """The events between the last one sent (`delivered`) and a live one numbered `seq`."""
    if seq <= delivered + 1:
        return []
    return await on_shared_thread(
        history.events_after, graph_id, delivered, seq - delivered - 1, until=seq - 1
    )
