"""Never lose an update: resume with since, the latest state with snapshot, after-commit sends."""

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import transaction

from executions import history
from executions.events import (
    send_execution_result,
    send_execution_result_sync,
    send_execution_results,
)
from executions.groups import graph_group_name
from executions.models import ExecutionEvent
from executions.schemas import ExecutionStatus, execution_event_frame
from tests.conftest import make_result, subscribe

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["memory", "redis-pubsub"])
def layer_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def numbered(node: str, **fields: Any) -> Any:
    return make_result(node_exec_id=node, **fields)


async def publish_many(count: int, start: int = 0, graph_id: str = "test_graph") -> None:
    await send_execution_results(
        numbered(str(number), graph_id=graph_id) for number in range(start, start + count)
    )


async def subscribe_with(client: Any, **data: Any) -> dict[str, Any]:
    await client.send_json_to({"method": "subscribe", "data": {"graph_id": "test_graph", **data}})
    reply: dict[str, Any] = await client.receive_json_from(timeout=5)
    return reply


async def receive_events(client: Any, count: int) -> list[dict[str, Any]]:
    return [await client.receive_json_from(timeout=5) for _ in range(count)]


async def test_since_replays_every_later_event_in_order_then_goes_live(
    connect: Any, alice_token: str
) -> None:
    await publish_many(10)
    client = await connect(token=alice_token)

    reply = await subscribe_with(client, since=4)

    assert reply == {
        "method": "subscribe",
        "data": {"head": 10, "oldest": 1, "truncated": False},
        "success": True,
        "channel": "test_graph",
        "error": None,
    }
    replayed = await receive_events(client, 6)
    assert [event["seq"] for event in replayed] == [5, 6, 7, 8, 9, 10]
    assert [event["data"]["node_exec_id"] for event in replayed] == ["4", "5", "6", "7", "8", "9"]
    await send_execution_result(numbered("live"))
    live = await client.receive_json_from(timeout=5)
    assert (live["seq"], live["data"]["node_exec_id"]) == (11, "live")
    assert await client.receive_nothing(timeout=0.2)


async def test_numbered_frames_are_the_live_frame_with_seq_appended(
    connect: Any, alice_token: str
) -> None:
    result = numbered("only")
    await send_execution_result(result)
    client = await connect(token=alice_token)

    await subscribe_with(client, since=0)

    expected = execution_event_frame(result)[:-1] + ',"seq":1}'
    assert await client.receive_from(timeout=5) == expected


async def test_without_since_frames_stay_byte_identical(connect: Any, alice_token: str) -> None:
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")
    result = numbered("plain")

    await send_execution_result(result)

    assert await client.receive_from(timeout=5) == execution_event_frame(result)


async def test_since_zero_replays_all_retained_history(connect: Any, alice_token: str) -> None:
    await publish_many(3)
    client = await connect(token=alice_token)

    await subscribe_with(client, since=0)

    assert [event["seq"] for event in await receive_events(client, 3)] == [1, 2, 3]


async def test_since_at_the_head_replays_nothing(connect: Any, alice_token: str) -> None:
    await publish_many(3)
    client = await connect(token=alice_token)

    reply = await subscribe_with(client, since=3)

    assert reply["data"] == {"head": 3, "oldest": 1, "truncated": False}
    assert await client.receive_nothing(timeout=0.2)


async def test_no_gap_and_no_duplicate_while_publishing_during_the_replay(
    connect: Any, alice_token: str
) -> None:
    """The race: events keep coming while history is being replayed."""
    await publish_many(1500)
    client = await connect(token=alice_token)

    async def keep_publishing() -> None:
        for number in range(1500, 1800):
            await send_execution_result(numbered(str(number)))
            await asyncio.sleep(0)

    publisher = asyncio.create_task(keep_publishing())
    await subscribe_with(client, since=0)
    events = await receive_events(client, 1800)
    await publisher

    assert [event["seq"] for event in events] == list(range(1, 1801))
    assert [event["data"]["node_exec_id"] for event in events] == [str(n) for n in range(1800)]
    assert await client.receive_nothing(timeout=0.2)


async def test_a_gap_in_the_live_stream_is_filled_from_history(
    connect: Any, alice_token: str, channel_layer: Any
) -> None:
    """An event the layer lost (or that arrives late) is read back from the history."""
    from executions.fanout import layer_event
    from executions.groups import graph_group_name

    client = await connect(token=alice_token)
    await subscribe_with(client, since=0)

    def store_without_sending(node: str) -> history.StoredEvent:
        return history.record([numbered(node)])[0]

    lost = await sync_to_async(store_without_sending)("lost")
    later = await sync_to_async(store_without_sending)("later")
    await channel_layer.group_send(graph_group_name("test_graph"), layer_event(later))
    await channel_layer.group_send(graph_group_name("test_graph"), layer_event(lost))

    events = await receive_events(client, 2)
    assert [(event["seq"], event["data"]["node_exec_id"]) for event in events] == [
        (lost.seq, "lost"),
        (later.seq, "later"),
    ]
    assert await client.receive_nothing(timeout=0.2)


async def test_a_graphs_events_in_one_layer_message_reach_the_subscriber_in_order(
    connect: Any, alice_token: str, channel_layer: Any, settings: Any
) -> None:
    """What another process sends: consecutive events of a graph as one layer message."""
    from executions.fanout import layer_batch, layer_event
    from executions.groups import graph_group_name

    settings.EXECUTIONS_SWEEP_SECONDS = 60  # brought by the message, not found by a sweep
    client = await connect(token=alice_token)
    await subscribe_with(client, since=0)
    stored = await sync_to_async(history.record)([numbered(str(n)) for n in range(5)])

    batch = layer_batch([layer_event(event) for event in stored])
    await channel_layer.group_send(graph_group_name("test_graph"), batch)

    events = await receive_events(client, 5)
    assert [(event["seq"], event["data"]["node_exec_id"]) for event in events] == [
        (seq, str(seq - 1)) for seq in range(1, 6)
    ]
    assert await client.receive_nothing(timeout=0.2)


@pytest.mark.parametrize("layer_kind", ["redis-pubsub"])
async def test_a_graphs_consecutive_events_share_layer_messages(
    alice: Any, channel_layer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = record_layer_messages(channel_layer, monkeypatch)
    most = 100  # EXECUTIONS_LAYER_BATCH_EVENTS's default
    many = 2 * most + 50
    results = [numbered(str(n)) for n in range(many)]
    results += [numbered("other", graph_id="graph-2"), numbered("last")]

    await send_execution_results(results)

    ours, other = graph_group_name("test_graph"), graph_group_name("graph-2")
    assert [(group, [node for node, _ in events]) for group, events in sent] == [
        (ours, [str(n) for n in range(most)]),
        (ours, [str(n) for n in range(most, 2 * most)]),
        (ours, [str(n) for n in range(2 * most, many)]),
        (other, ["other"]),
        (ours, ["last"]),
    ]


@pytest.mark.parametrize("layer_kind", ["redis-pubsub"])
async def test_a_layer_message_of_several_events_stays_within_its_byte_limit(
    alice: Any, channel_layer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from executions import events

    limit = 4 * len(execution_event_frame(numbered("10"))) - 1  # frames "10".."29": one size
    monkeypatch.setattr(events, "LAYER_BATCH_BYTES", limit)
    sent = record_layer_messages(channel_layer, monkeypatch)

    await send_execution_results([numbered(str(n)) for n in range(10, 30)])

    batches = [events for _, events in sent]
    assert [node for batch in batches for node, _ in batch] == [str(n) for n in range(10, 30)]
    assert all(sum(size for _, size in batch) <= limit for batch in batches)
    assert max(len(batch) for batch in batches) == 3


def record_layer_messages(
    layer: Any, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, list[tuple[str, int]]]]:
    """Every group_send of the layer: its group and each event's node_exec_id and frame size."""
    sent: list[tuple[str, list[tuple[str, int]]]] = []
    group_send = layer.group_send

    async def recorded(group: str, message: dict[str, Any]) -> None:
        events = message.get("events", [message])
        sent.append(
            (
                group,
                [
                    (json.loads(event["frame"])["data"]["node_exec_id"], len(event["frame"]))
                    for event in events
                ],
            )
        )
        await group_send(group, message)

    monkeypatch.setattr(layer, "group_send", recorded)
    return sent


async def test_a_position_beyond_retention_is_reported_as_truncated(
    connect: Any, alice_token: str
) -> None:
    await publish_many(10)
    await sync_to_async(history.prune)(max_events=4, max_age=None)
    client = await connect(token=alice_token)

    reply = await subscribe_with(client, since=2)

    assert reply["data"] == {"head": 10, "oldest": 7, "truncated": True}
    assert [event["seq"] for event in await receive_events(client, 4)] == [7, 8, 9, 10]


async def test_a_position_past_the_head_is_reported_and_everything_replayed(
    connect: Any, alice_token: str
) -> None:
    """A client from another history (a reset database) is told, not silently skipped."""
    await publish_many(2)
    client = await connect(token=alice_token)

    reply = await subscribe_with(client, since=50)

    assert reply["data"] == {"head": 2, "oldest": 1, "truncated": True}
    assert [event["seq"] for event in await receive_events(client, 2)] == [1, 2]


async def test_snapshot_sends_the_latest_result_of_each_node_of_the_latest_execution(
    connect: Any, alice_token: str
) -> None:
    await send_execution_results(
        [
            make_result(graph_exec_id="old-run", node_id="a", status=ExecutionStatus.COMPLETED),
            make_result(graph_exec_id="run", node_id="a", status=ExecutionStatus.QUEUED),
            make_result(graph_exec_id="run", node_id="b", status=ExecutionStatus.QUEUED),
            make_result(graph_exec_id="run", node_id="a", status=ExecutionStatus.RUNNING),
            make_result(graph_exec_id="run", node_id="a", status=ExecutionStatus.COMPLETED),
            make_result(graph_exec_id="run", node_id="b", status=ExecutionStatus.RUNNING),
        ]
    )
    client = await connect(token=alice_token)

    reply = await subscribe_with(client, snapshot=True)

    assert reply["data"] == {"head": 6, "oldest": 1, "truncated": False}
    state = await receive_events(client, 2)
    assert [(e["seq"], e["data"]["node_id"], e["data"]["status"]) for e in state] == [
        (5, "a", "COMPLETED"),
        (6, "b", "RUNNING"),
    ]
    assert await client.receive_nothing(timeout=0.2)
    await send_execution_result(make_result(graph_exec_id="run", node_id="b"))
    assert (await client.receive_json_from(timeout=5))["seq"] == 7


async def test_snapshot_of_a_graph_without_history_is_empty(connect: Any, alice_token: str) -> None:
    client = await connect(token=alice_token)

    reply = await subscribe_with(client, snapshot=True)

    assert reply["data"] == {"head": 0, "oldest": 1, "truncated": False}
    assert await client.receive_nothing(timeout=0.2)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"since": -1}, "since must be a non-negative integer (a sequence number)."),
        ({"since": "3"}, "since must be a non-negative integer (a sequence number)."),
        ({"since": 1.5}, "since must be a non-negative integer (a sequence number)."),
        ({"since": True}, "since must be a non-negative integer (a sequence number)."),
        ({"snapshot": "yes"}, "snapshot must be true or false."),
    ],
)
async def test_bad_resume_options_get_an_error_frame(
    connect: Any, alice_token: str, data: dict[str, Any], error: str
) -> None:
    client = await connect(token=alice_token)

    reply = await subscribe_with(client, **data)

    assert reply == {
        "method": "error",
        "data": None,
        "success": False,
        "channel": "test_graph",
        "error": error,
    }


async def test_a_rolled_back_transaction_publishes_nothing(connect: Any, alice_token: str) -> None:
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")

    def publish_then_fail() -> None:
        with transaction.atomic():
            send_execution_result_sync(numbered("doomed"))
            raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError, match="the work failed"):
        await sync_to_async(publish_then_fail)()

    assert await client.receive_nothing(timeout=0.3)
    assert await sync_to_async(ExecutionEvent.objects.count)() == 0


async def test_a_committed_transaction_publishes_once_after_the_commit(
    connect: Any, alice_token: str
) -> None:
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")

    def publish_in_a_transaction() -> bool:
        with transaction.atomic():
            send_execution_result_sync(numbered("kept"))
            return bool(async_to_sync(client.receive_nothing)(0.3))

    silent_before_commit = await sync_to_async(publish_in_a_transaction)()

    assert silent_before_commit
    event = json.loads(await client.receive_from(timeout=5))
    assert event["data"]["node_exec_id"] == "kept"
    assert await client.receive_nothing(timeout=0.2)


async def test_after_the_unsubscribe_ack_nothing_more_arrives(
    connect: Any, alice_token: str
) -> None:
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")

    await publish_many(50)
    await client.send_json_to({"method": "unsubscribe", "data": {"graph_id": "test_graph"}})
    received = []
    while True:
        frame = await client.receive_json_from(timeout=5)
        if frame["method"] == "unsubscribe":
            break
        received.append(frame)

    sent_before_the_ack = [event["data"]["node_exec_id"] for event in received]
    assert sent_before_the_ack == [str(n) for n in range(len(sent_before_the_ack))]
    assert await client.receive_nothing(timeout=0.3)


async def test_an_event_the_layer_never_brought_arrives_from_the_history(
    connect: Any, alice_token: str, settings: Any
) -> None:
    """Stored but never sent (a Redis blip): the sweep hands it out within two sweeps."""
    settings.EXECUTIONS_SWEEP_SECONDS = 0.2
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")

    lost = await sync_to_async(history.record)([numbered("never-sent")])

    event = json.loads(await client.receive_from(timeout=3))
    assert event == json.loads(lost[0].frame)
    assert await client.receive_nothing(timeout=0.5)
