"""Joining and leaving channel-layer groups, with bounded concurrency per event loop.

A burst of a thousand disconnects must not ask the Redis pool for a thousand connections at
once (redis-py raises MaxConnectionsError past its limit and the member stays behind for a day),
so every group_add / group_discard of this process waits its turn here.
"""

import asyncio
from typing import Any

from executions import conf
from executions.loops import PerLoop

_gates = PerLoop(lambda: asyncio.Semaphore(conf.get("EXECUTIONS_MEMBERSHIP_CONCURRENCY")))


async def join(layer: Any, group: str, channel_name: str) -> None:
    async with _gates.get():
        await layer.group_add(group, channel_name)


async def leave(layer: Any, group: str, channel_name: str) -> None:
    async with _gates.get():
        await layer.group_discard(group, channel_name)


def refresh_interval(layer: Any) -> float | None:
    """Seconds between re-joins that keep memberships from expiring, or None if they never do.

    The core Redis layer and the in-memory layer forget a member after ``group_expiry`` seconds
    (a day by default); re-adding it at half that age keeps a long-lived subscription alive.
    """
    expiry = getattr(layer, "group_expiry", None)
    if not isinstance(expiry, int | float) or expiry <= 0:
        return None
    return max(expiry / 2, 0.5)
