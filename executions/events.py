"""Publishing execution results: stored with a sequence number, then sent once committed.

Every publish, sync or async, from a view, a task or the ingest endpoint, takes the one path
here: validate, store in the caller's transaction (or, outside one, with the other publishes of
the moment in one transaction of the writer thread: writers.py), and send to the graph's
subscribers only after that transaction commits, never for one that rolls back.
"""

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

from asgiref.sync import AsyncToSync, async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from executions import conf, history, metrics
from executions.exceptions import PublishNotDelivered
from executions.fanout import (
    LAYER_BATCH_BYTES,
    YIELD_EVERY,
    hand_out_in_process,
    layer_batch,
    layer_event,
    reached_every_member,
)
from executions.groups import graph_group_name
from executions.history import StoredEvent
from executions.loops import PerLoop
from executions.schemas import (
    PUBLISHABLE,
    PUBLISHABLE_ADAPTER,
    GraphExecutionEvent,
    NodeExecutionEvent,
    Publishable,
)
from executions.writers import writers

# A result or one of AutoGPT's events, as a model or as its JSON data (told apart by
# "event_type": "graph_execution_update", "node_execution_update", or none for a result).
ResultLike = Publishable | Mapping[str, Any]


def _validated(results: Iterable[ResultLike]) -> list[Publishable]:
    return [
        result if isinstance(result, PUBLISHABLE) else PUBLISHABLE_ADAPTER.validate_python(result)
        for result in results
    ]


async def broadcast(events: Sequence[StoredEvent]) -> None:
    """Send stored events to their graphs' subscribers, in order.

    First every event goes straight to this process's own subscribers; then, in order, through
    the layer to every process's (this one's fan-out drops the copies it already handed out),
    consecutive events of one graph in one layer message.
    On the in-memory layer, through the layer only when someone else has joined the group.

    Raises PublishNotDelivered when the channel layer fails: the events from the one that
    failed on are stored, and reach this process's subscribers and those that resume with
    ``since``, but not the live stream of other processes.
    """
    layer = get_channel_layer()
    now = time.time()
    messages = [(graph_group_name(event.graph_id), layer_event(event, now)) for event in events]
    async with _hand_out_turns.get():
        for start in range(0, len(messages), YIELD_EVERY):
            # Each subscriber gets these events' frames in one write.
            hand_out_in_process(
                layer, [message for _, message in messages[start : start + YIELD_EVERY]]
            )
            if start + YIELD_EVERY < len(messages):
                # Handing out never waits: let the connections send and read now and then.
                await asyncio.sleep(0)
    for start, end in _runs_of_one_group(messages):
        group = messages[start][0]
        if not reached_every_member(layer, group):
            run = [message for _, message in messages[start:end]]
            try:
                await layer.group_send(group, run[0] if len(run) == 1 else layer_batch(run))
            except Exception as exc:
                metrics.LAYER_FAILURES.labels("group_send").inc()
                raise PublishNotDelivered(events[start:]) from exc
        metrics.EVENTS_PUBLISHED.inc(end - start)


def _runs_of_one_group(messages: list[tuple[str, dict[str, Any]]]) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of consecutive messages to one group, within
    EXECUTIONS_LAYER_BATCH_EVENTS events and LAYER_BATCH_BYTES of frames: each goes through the
    layer as one message."""
    most = max(1, int(conf.get("EXECUTIONS_LAYER_BATCH_EVENTS")))
    start = 0
    while start < len(messages):
        group, size = messages[start][0], len(messages[start][1]["frame"])
        end = start + 1
        while end < len(messages) and end - start < most and messages[end][0] == group:
            size += len(messages[end][1]["frame"])
            if size > LAYER_BATCH_BYTES:
                break
            end += 1
        yield start, end
        start = end


# One hand-out at a time per event loop. The publishers of a batch resume in the order it
# numbered them; one that yields midway must not let the next one's events pass its own, which
# a subscriber would see as a gap and read again from the history.
_hand_out_turns = PerLoop(asyncio.Lock)


def _in_transaction() -> bool:
    return transaction.get_connection().in_atomic_block


def _sync_caller_waits() -> bool:
    """Whether sync code (which may hold a transaction) waits on this coroutine through
    async_to_sync. Only then can a transaction be open for the publish to join: elsewhere (an
    ASGI request, a worker's own loop) looking would cost every publish a trip through the one
    thread-sensitive thread, serializing publishers the writer could store together.

    Read from asgiref's record of the sync threads it runs coroutines for; should it ever move,
    the answer is "maybe", and the publish looks.
    """
    executors = getattr(AsyncToSync, "executors", None)
    loop_executors = getattr(AsyncToSync, "loop_thread_executors", None)
    if executors is None or loop_executors is None:
        return True
    return (
        getattr(executors, "current", None) is not None
        or asyncio.get_running_loop() in loop_executors
    )


def _store_in_transaction(results: list[Publishable]) -> list[StoredEvent]:
    """Store results in the caller's open transaction; send them when it commits."""
    stored = history.record(results)
    transaction.on_commit(partial(async_to_sync(broadcast), stored))
    return stored


async def send_execution_results(
    results: Iterable[ResultLike], *, outside_any_transaction: bool = False
) -> list[int]:
    """Validate every result first, then store and send them in order; return their numbers.

    When the calling sync code has a transaction open (this coroutine runs under its
    async_to_sync), the results are stored in it and sent when it commits, never if it rolls
    back. Otherwise they go to the writer thread (writers.py), which stores them in one
    transaction with whatever other publishes are waiting, and are sent once that commits. Code
    that knows no transaction can be open (the ingest endpoint) passes
    ``outside_any_transaction=True`` and skips the look.
    """
    validated = _validated(results)
    if not validated:
        return []
    if (
        not outside_any_transaction
        and _sync_caller_waits()
        and await database_sync_to_async(_in_transaction)()
    ):
        stored = await database_sync_to_async(_store_in_transaction)(validated)
        return [event.seq for event in stored]
    # Handed to the writer now, ahead of the task that waits for it (one loop turn sooner).
    # Once there a publish completes, even if its caller is cancelled meanwhile (an ingest
    # client hanging up): what gets stored is also sent.
    task = asyncio.ensure_future(_send_once_stored(writers.submit(validated)))
    _completing.add(task)
    task.add_done_callback(_completing.discard)
    stored = await asyncio.shield(task)
    return [event.seq for event in stored]


# Publishes whose callers stopped waiting, kept referenced until they complete.
_completing: set["asyncio.Future[list[StoredEvent]]"] = set()


async def _send_once_stored(storing: "asyncio.Future[list[StoredEvent]]") -> list[StoredEvent]:
    stored = await storing
    await broadcast(stored)
    return stored


async def send_execution_result(result: ResultLike) -> int:
    """Store a result and send it to every subscriber of its graph; return its number."""
    (seq,) = await send_execution_results([result])
    return seq


def send_execution_results_sync(results: Iterable[ResultLike]) -> list[int]:
    """The same as send_execution_results, for views, tasks and other synchronous code.

    Inside a transaction, the results are sent when it commits, and never if it rolls back.
    Outside one, they are stored by the writer thread with other waiting publishes.
    """
    validated = _validated(results)
    if not validated:
        return []
    if _in_transaction():
        stored = _store_in_transaction(validated)
    else:
        stored = writers.run_sync(validated)
        async_to_sync(broadcast)(stored)
    return [event.seq for event in stored]


def send_execution_result_sync(result: ResultLike) -> int:
    """The same as send_execution_result, for synchronous code."""
    (seq,) = send_execution_results_sync([result])
    return seq


async def send_node_execution_event(event: NodeExecutionEvent | Mapping[str, Any]) -> int:
    """Store AutoGPT's node execution event and send it; return its number in its graph.

    Subscribers of its execution get it as ``node_execution_event``, subscribers of its graph
    (the original protocol) as ``execution_event``, like a result published with
    send_execution_result.
    """
    return await send_execution_result(NodeExecutionEvent.model_validate(event))


def send_node_execution_event_sync(event: NodeExecutionEvent | Mapping[str, Any]) -> int:
    """The same as send_node_execution_event, for synchronous code."""
    return send_execution_result_sync(NodeExecutionEvent.model_validate(event))


async def send_graph_execution_event(event: GraphExecutionEvent | Mapping[str, Any]) -> int:
    """Store AutoGPT's graph execution event and send it; return its number in its graph.

    Subscribers of its execution and of all its graph's executions get it as
    ``graph_execution_event``; the original protocol's subscribers do not.
    """
    return await send_execution_result(GraphExecutionEvent.model_validate(event))


def send_graph_execution_event_sync(event: GraphExecutionEvent | Mapping[str, Any]) -> int:
    """The same as send_graph_execution_event, for synchronous code."""
    return send_execution_result_sync(GraphExecutionEvent.model_validate(event))
