"""Fan-out per process: one channel-layer membership per graph, one direct hand-off per socket.

Each event loop (a daphne or uvicorn process) has one LocalFanout. It joins a graph's group the
first time one of its connections subscribes and leaves when the last one goes, receives each
event once from the layer, and hands the very same message to every local subscriber. One event
is thus one layer message per process, not one per subscriber.

The fan-out also joins the revocations group (executions.revocation) while the process has
connections, and closes the connections a revocation names.

The layer may lose events (Redis restarts, a pub/sub reconnection window). A sweep compares, now
and then, each followed graph's stored head with the last number the layer brought: a number
stored a whole sweep ago and still not seen is handed out from the history, and the connections'
own gap filling brings whatever else is missing. Nothing committed stays away from a live
subscriber for longer than about two sweeps.
"""

import asyncio
import logging
import time
import weakref
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer

from executions import conf, history, membership, metrics
from executions.groups import graph_group_name
from executions.history import StoredEvent
from executions.outbox import frames_sent_together
from executions.revocation import REVOCATIONS_GROUP, REVOKE_EVENT, Credential, applies_to
from executions.schemas import EXECUTION_RESULT_EVENT, EXECUTION_RESULTS_EVENT

logger = logging.getLogger(__name__)

# After a failed receive (the broker is down), wait this long before trying again.
RECEIVE_RETRY_SECONDS = 1.0
# Events handed out in a row before the connections get a turn to send them.
YIELD_EVERY = 64
# The most frame bytes one channel-layer message of several events carries (far below Redis's
# pub/sub output buffer limits); its count is EXECUTIONS_LAYER_BATCH_EVENTS.
LAYER_BATCH_BYTES = 256 * 1024


def layer_event(event: StoredEvent, published_at: float | None = None) -> dict[str, Any]:
    """The channel-layer message for a stored event: its frame, serialized once for all.

    ``published_at`` defaults to now; a publish of many events reads the clock once for all.
    """
    message = event.message()
    message["type"] = EXECUTION_RESULT_EVENT
    message["published_at"] = time.time() if published_at is None else published_at
    return message


def layer_batch(events: list[dict[str, Any]]) -> dict[str, Any]:
    """One channel-layer message for consecutive ``layer_event``s of one graph."""
    return {"type": EXECUTION_RESULTS_EVENT, "events": events}


class Receiver(Protocol):
    def enqueue(self, event: dict[str, Any]) -> int:
        """Take an event, for later sending or written at once; return the frames written at
        once. Must not block."""


class Revocable(Protocol):
    def revoke(self, reason: str) -> None:
        """Close with 4001 and `reason` soon; must not block."""


class LocalFanout:
    """The process's subscriptions, by graph, and the one task that receives their events."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.members: dict[str, set[Receiver]] = {}
        # The process's authenticated connections, by user key, and how each authenticated.
        self.connections: dict[str, dict[Revocable, Credential]] = {}
        self.channel_name: str | None = None
        self._changes = asyncio.Lock()
        self._receiving: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None
        # The highest number the layer has brought, per graph.
        self._seen: dict[str, int] = {}

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
            await self._leave(graph_group_name(graph_id))
            self._stop_when_idle()

    async def track(self, connection: Revocable, credential: Credential) -> None:
        """Follow revocations for an authenticated connection until untrack()."""
        async with self._changes:
            if not self.connections:
                await membership.join(self.layer, REVOCATIONS_GROUP, await self._channel())
            self.connections.setdefault(credential.user_key, {})[connection] = credential
            self._start()

    async def untrack(self, connection: Revocable, credential: Credential) -> None:
        async with self._changes:
            of_user = self.connections.get(credential.user_key, {})
            if of_user.pop(connection, None) is None:
                return
            if not of_user:
                del self.connections[credential.user_key]
            if not self.connections:
                await self._leave(REVOCATIONS_GROUP)
            self._stop_when_idle()

    async def _leave(self, group: str) -> None:
        """Leave a group; a layer that fails to let go only costs it messages nobody reads."""
        try:
            await membership.leave(self.layer, group, await self._channel())
        except Exception:
            metrics.LAYER_FAILURES.labels("group_discard").inc()
            logger.warning("leaving %s failed", group, exc_info=True)

    def revoke(self, event: dict[str, Any]) -> None:
        """Close every local connection a revocation applies to."""
        of_user = self.connections.get(event["user_id"], {})
        for connection, credential in tuple(of_user.items()):
            if applies_to(event, credential):
                connection.revoke(event["reason"])

    def _stop_when_idle(self) -> None:
        if not self.members and not self.connections:
            self._stop()

    async def _channel(self) -> str:
        if self.channel_name is None:
            self.channel_name = await self.layer.new_channel(prefix="executions.fanout.")
        return self.channel_name

    def _start(self) -> None:
        if self._receiving is None:
            self._receiving = asyncio.create_task(self._receive_forever())
        if self._sweeping is None:
            interval = conf.get("EXECUTIONS_SWEEP_SECONDS")
            self._sweeping = asyncio.create_task(self._sweep_forever(interval))
        interval = membership.refresh_interval(self.layer)
        if interval is not None and self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh_forever(interval))

    def _stop(self) -> None:
        for task in (self._receiving, self._refreshing, self._sweeping):
            if task is not None:
                task.cancel()
        self._receiving = self._refreshing = self._sweeping = None
        self._seen = {}
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
            kind = event.get("type")
            if kind == EXECUTION_RESULT_EVENT:
                self.hand_out(event)
                handed_out += 1
            elif kind == EXECUTION_RESULTS_EVENT:
                self.hand_out_all(event["events"])
                handed_out += len(event["events"])
            elif kind == REVOKE_EVENT:
                self.revoke(event)
                handed_out += 1
            if handed_out >= YIELD_EVERY:
                handed_out = 0
                # A receive that finds a message ready does not yield: let the connections
                # send now and then, so a long burst does not pile up in their backlogs.
                await asyncio.sleep(0)

    def hand_out_all(self, events: list[dict[str, Any]]) -> None:
        """hand_out each event, in order, each subscriber's frames sent together."""
        members = self.members
        with frames_sent_together():
            for event in events:
                if event["graph_id"] in members:
                    self.hand_out(event)

    def hand_out(self, event: dict[str, Any]) -> None:
        """Give an event to every local subscriber of its graph, unless a later one went first.

        A number at or below the highest handed out is a copy (an event published here comes
        straight from the publisher, then again through the layer) or a late arrival that the
        connections have already read from the history when they saw the gap before it.
        """
        graph_id, seq = event["graph_id"], event["seq"]
        if seq <= self._seen.get(graph_id, 0):
            return
        self._seen[graph_id] = seq
        written = 0
        for receiver in tuple(self.members.get(graph_id, ())):
            written += receiver.enqueue(event)
        if written:
            # Once per event, not per connection: at tens of thousands of frames a second the
            # metrics' locks would cost more than the frames (the frames written at once all
            # left at this moment; those sent later from a backlog are observed one by one).
            metrics.FRAMES_DELIVERED.inc(written)
            metrics.observe_publish_to_send(event)

    async def _sweep_forever(self, interval: float) -> None:
        """Hand out, from the history, what the layer has not brought in a whole sweep."""
        overdue: dict[str, int] = {}
        while True:
            await asyncio.sleep(interval)
            try:
                overdue = await self._sweep(overdue)
            except Exception:
                logger.exception("the history sweep failed; trying again at the next one")

    async def _sweep(self, overdue: dict[str, int]) -> dict[str, int]:
        """Repair what was stored by the last sweep and not brought since; return the heads now.

        (A graph just followed is repaired once with its latest event; its connections, which
        started at that head, drop it.)
        """
        for graph_id, head in overdue.items():
            if graph_id in self.members and self._seen.get(graph_id, 0) < head:
                missed = await database_sync_to_async(history.events_after)(graph_id, head - 1, 1)
                for stored in missed:
                    metrics.EVENTS_RECOVERED.inc()
                    self.hand_out(layer_event(stored))
        if not self.members:
            return {}
        return await database_sync_to_async(history.heads)(list(self.members))

    async def _refresh_forever(self, interval: float) -> None:
        """Re-join every group before the layer's group_expiry forgets this process."""
        while True:
            await asyncio.sleep(interval)
            channel = await self._channel()
            groups = [graph_group_name(graph_id) for graph_id in tuple(self.members)]
            if self.connections:
                groups.append(REVOCATIONS_GROUP)
            for group in groups:
                try:
                    await membership.join(self.layer, group, channel)
                except Exception:
                    metrics.LAYER_FAILURES.labels("group_add").inc()
                    logger.exception("refreshing the membership of %s failed", group)


_fanouts: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, LocalFanout]]" = (
    weakref.WeakKeyDictionary()
)


def hand_out_in_process(layer: Any, events: list[dict[str, Any]]) -> None:
    """Give events published in this process to its own subscribers, in order, without the
    layer.

    The layer brings the same events a moment later (to other processes too); this process's
    fan-out drops those copies. Fan-outs of other event loops in the process get them on their
    loop. (A list at a time: looking up the loops' fan-outs cost as much as handing one event
    out.)
    """
    running = asyncio.get_running_loop()
    for loop, per_layer in list(_fanouts.items()):
        fanout = per_layer.get(id(layer))
        if fanout is None or fanout.layer is not layer or not fanout.members:
            continue
        if loop is running:
            fanout.hand_out_all(events)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(fanout.hand_out_all, events)


def reached_every_member(layer: Any, group: str) -> bool:
    """Whether handing an event out in this process has reached every member of its group.

    True on the in-memory layer (one process) when the group's members are all this process's
    fan-outs: sending the event through the layer as well would only bring each of them a copy
    to drop. Any other member (another consumer joined to the group) still gets it through the
    layer, and so does every member on a layer shared between processes.
    """
    if not isinstance(layer, InMemoryChannelLayer):
        return False
    ours = {
        fanout.channel_name
        for per_layer in list(_fanouts.values())
        for fanout in per_layer.values()
        if fanout.layer is layer
    }
    # The in-memory layer's own membership table (channel name -> when it joined).
    return layer.groups.get(group, {}).keys() <= ours


def local_fanout(layer: Any) -> LocalFanout:
    """The fan-out of the running event loop for a channel layer."""
    per_loop = _fanouts.setdefault(asyncio.get_running_loop(), {})
    fanout = per_loop.get(id(layer))
    if fanout is None or fanout.layer is not layer:
        fanout = per_loop[id(layer)] = LocalFanout(layer)
    return fanout
