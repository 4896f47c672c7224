"""Fan-out per process: one channel-layer membership per graph, one direct hand-off per socket.

Each event loop (a daphne or uvicorn process) has one LocalFanout. It joins a graph's group the
first time one of its connections subscribes and leaves when the last one goes, receives each
event once from the layer, and hands the very same message to every local subscriber. One event
is thus one layer message per process, not one per subscriber.
"""

import asyncio
import logging
import weakref
from typing import Any, Protocol

from executions import membership, metrics
from executions.groups import graph_group_name
from executions.schemas import EXECUTION_RESULT_EVENT

logger = logging.getLogger(__name__)

# After a failed receive (the broker is down), wait this long before trying again.
RECEIVE_RETRY_SECONDS = 1.0
# Events handed out in a row before the connections get a turn to send them.
YIELD_EVERY = 64


class Receiver(Protocol):
    def enqueue(self, event: dict[str, Any]) -> None:
        """Take an event for later sending; must not block."""


class LocalFanout:
    """The process's subscriptions, by graph, and the one task that receives their events."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.members: dict[str, set[Receiver]] = {}
        self.channel_name: str | None = None
        self._changes = asyncio.Lock()
        self._receiving: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None

    async def add(self, graph_id: str, receiver: Receiver) -> None:
        async with self._changes:
            members = self.members.get(graph_id)
            if members is not None:
                members.add(receiver)
                return
            await membership.join(self.layer, graph_group_name(graph_id), await self._channel())
            self.members[graph_id] = {receiver}
            self._start()

    async def discard(self, graph_id: str, receiver: Receiver) -> None:
        async with self._changes:
            members = self.members.get(graph_id)
            if members is None or receiver not in members:
                return
            members.discard(receiver)
            if members:
                return
            del self.members[graph_id]
            await membership.leave(self.layer, graph_group_name(graph_id), await self._channel())
            if not self.members:
                self._stop()

    async def _channel(self) -> str:
        if self.channel_name is None:
            self.channel_name = await self.layer.new_channel(prefix="executions.fanout.")
        return self.channel_name

    def _start(self) -> None:
        if self._receiving is None:
            self._receiving = asyncio.create_task(self._receive_forever())
        interval = membership.refresh_interval(self.layer)
        if interval is not None and self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh_forever(interval))

    def _stop(self) -> None:
        for task in (self._receiving, self._refreshing):
            if task is not None:
                task.cancel()
        self._receiving = self._refreshing = None
        # A cancelled receive may delete its channel (the pub/sub layer does): start afresh.
        self.channel_name = None

    async def _receive_forever(self) -> None:
        channel = await self._channel()
        handed_out = 0
        while True:
            try:
                event = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.LAYER_FAILURES.labels("receive").inc()
                logger.exception("fan-out receive failed; retrying")
                await asyncio.sleep(RECEIVE_RETRY_SECONDS)
                continue
            if event.get("type") == EXECUTION_RESULT_EVENT:
                for receiver in tuple(self.members.get(event["graph_id"], ())):
                    receiver.enqueue(event)
            handed_out += 1
            if handed_out % YIELD_EVERY == 0:
                # A receive that finds a message ready does not yield: let the connections
                # send now and then, so a long burst does not pile up in their backlogs.
                await asyncio.sleep(0)

    async def _refresh_forever(self, interval: float) -> None:
        """Re-join every group before the layer's group_expiry forgets this process."""
        while True:
            await asyncio.sleep(interval)
            channel = await self._channel()
            for graph_id in tuple(self.members):
                try:
                    await membership.join(self.layer, graph_group_name(graph_id), channel)
                except Exception:
                    metrics.LAYER_FAILURES.labels("group_add").inc()
                    logger.exception("refreshing the membership of %s failed", graph_id)


_fanouts: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, LocalFanout]]" = (
    weakref.WeakKeyDictionary()
)


def local_fanout(layer: Any) -> LocalFanout:
    """The fan-out of the running event loop for a channel layer."""
    per_loop = _fanouts.setdefault(asyncio.get_running_loop(), {})
    fanout = per_loop.get(id(layer))
    if fanout is None or fanout.layer is not layer:
        fanout = per_loop[id(layer)] = LocalFanout(layer)
    return fanout
