"""AutoGPT's current protocol, on the same /ws as the original one.

Client methods: ``subscribe_graph_execution {graph_exec_id}``, ``subscribe_graph_executions
{graph_id}``, ``unsubscribe {graph_exec_id}``, ``heartbeat``. Server frames:
``graph_execution_event`` and ``node_execution_event`` on the channels
``{user_id}|graph_exec#{graph_exec_id}`` and ``{user_id}|graph#{graph_id}|executions``, each the
``model_dump_json()`` of ``WSMessage(method, channel, data=event.model_dump())``.
"""

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import transaction

from executions.events import (
    send_execution_result,
    send_execution_results,
    send_graph_execution_event,
    send_graph_execution_event_sync,
    send_node_execution_event,
)
from executions.fanout import local_fanout
from executions.models import ExecutionEvent, Graph
from executions.schemas import (
    ExecutionStatus,
    GraphExecutionEvent,
    Methods,
    NodeExecutionEvent,
    WsMessage,
)
from tests.conftest import make_result
from tests.support import group_members

pytestmark = pytest.mark.django_db(transaction=True)

INGEST_TOKEN = "ingest-secret"
MOMENT = datetime(2026, 12, 4, 12, 30, 15, 250000, tzinfo=UTC)


@pytest.fixture(params=["memory", "redis-pubsub"])
def layer_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def node_event(user_id: str, graph_exec_id: str = "exec-1", **overrides: Any) -> NodeExecutionEvent:
    fields: dict[str, Any] = {
        "user_id": user_id,
        "graph_id": "test_graph",
        "graph_version": 3,
        "graph_exec_id": graph_exec_id,
        "node_exec_id": "node-exec-1",
        "node_id": "node-1",
        "block_id": "block-1",
        "status": ExecutionStatus.RUNNING,
        "input_data": {"text": "héllo"},
        "output_data": {},
        "add_time": MOMENT,
        "queue_time": MOMENT,
        "start_time": MOMENT,
        "end_time": None,
    }
    fields.update(overrides)
    return NodeExecutionEvent(**fields)


def graph_event(
    user_id: str, graph_exec_id: str = "exec-1", **overrides: Any
) -> GraphExecutionEvent:
    fields: dict[str, Any] = {
        "id": graph_exec_id,
        "user_id": user_id,
        "graph_id": "test_graph",
        "graph_version": 3,
        "inputs": {"topic": "owls"},
        "status": ExecutionStatus.COMPLETED,
        "started_at": MOMENT,
        "ended_at": MOMENT,
        "stats": {"cost": 12, "duration": 1.5, "node_exec_count": 2},
        "outputs": {"summary": ["Owls hoot."]},
    }
    fields.update(overrides)
    return GraphExecutionEvent(**fields)


def autogpt_frame(method: Methods, channel: str, event: Any) -> str:
    """What AutoGPT's ConnectionManager sends for an event on a channel."""
    return WsMessage(method=method, channel=channel, data=event.model_dump()).model_dump_json()


async def send(client: Any, method: str, data: Any) -> dict[str, Any]:
    await client.send_json_to({"method": method, "data": data})
    reply: dict[str, Any] = await client.receive_json_from(timeout=5)
    return reply


@pytest.fixture
def bob(make_user: Callable[..., Any]) -> Any:
    return make_user("bob", graphs=("bob_graph",))


@pytest.fixture
async def alice_client(connect: Any, alice_token: str) -> Any:
    return await connect(token=alice_token)


# The frames, byte for byte.


def test_node_execution_event_frame_is_autogpts_bytes() -> None:
    event = node_event("user-1")

    frame = autogpt_frame(Methods.NODE_EXECUTION_EVENT, "user-1|graph_exec#exec-1", event)

    assert frame == (
        '{"method":"node_execution_event","data":{"user_id":"user-1","graph_id":"test_graph",'
        '"graph_version":3,"graph_exec_id":"exec-1","node_exec_id":"node-exec-1",'
        '"node_id":"node-1","block_id":"block-1","status":"RUNNING",'
        '"input_data":{"text":"héllo"},"output_data":{},'
        '"add_time":"2026-12-04T12:30:15.250000Z","queue_time":"2026-12-04T12:30:15.250000Z",'
        '"start_time":"2026-12-04T12:30:15.250000Z","end_time":null,'
        '"event_type":"node_execution_update"},'
        '"success":null,"channel":"user-1|graph_exec#exec-1","error":null}'
    )


def test_graph_execution_event_frame_is_autogpts_bytes() -> None:
    event = graph_event("user-1")

    frame = autogpt_frame(Methods.GRAPH_EXECUTION_EVENT, "user-1|graph_exec#exec-1", event)

    # Unset float stats stay 0, as AutoGPT's model_dump() leaves its integer defaults.
    assert frame == (
        '{"method":"graph_execution_event","data":{"id":"exec-1","user_id":"user-1",'
        '"graph_id":"test_graph","graph_version":3,"inputs":{"topic":"owls"},'
        '"credential_inputs":null,"nodes_input_masks":null,"preset_id":null,'
        '"status":"COMPLETED","started_at":"2026-12-04T12:30:15.250000Z",'
        '"ended_at":"2026-12-04T12:30:15.250000Z","is_shared":false,"share_token":null,'
        '"stats":{"cost":12,"duration":1.5,"duration_cpu_only":0,"node_exec_time":0,'
        '"node_exec_time_cpu_only":0,"node_exec_count":2,"node_error_count":0,"error":null,'
        '"activity_status":null,"correctness_score":null},"outputs":{"summary":["Owls hoot."]},'
        '"event_type":"graph_execution_update"},'
        '"success":null,"channel":"user-1|graph_exec#exec-1","error":null}'
    )


# Subscribing to one execution.


async def test_subscribe_graph_execution_is_acknowledged_with_the_channel(
    alice_client: Any, alice: Any
) -> None:
    await send_node_execution_event(node_event(str(alice.pk)))

    await alice_client.send_json_to(
        {"method": "subscribe_graph_execution", "data": {"graph_exec_id": "exec-1"}}
    )

    assert await alice_client.receive_from(timeout=5) == (
        '{"method":"subscribe_graph_execution","data":null,"success":true,'
        f'"channel":"{alice.pk}|graph_exec#exec-1","error":null}}'
    )


async def test_an_executions_node_and_graph_events_arrive_as_autogpt_sends_them(
    alice_client: Any, alice: Any
) -> None:
    user_id = str(alice.pk)
    await send_node_execution_event(node_event(user_id, status=ExecutionStatus.QUEUED))
    await send(alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1"})
    channel = f"{user_id}|graph_exec#exec-1"
    running = node_event(user_id)
    finished = graph_event(user_id)

    await send_node_execution_event(running)
    await send_graph_execution_event(finished)

    assert await alice_client.receive_from(timeout=5) == autogpt_frame(
        Methods.NODE_EXECUTION_EVENT, channel, running
    )
    assert await alice_client.receive_from(timeout=5) == autogpt_frame(
        Methods.GRAPH_EXECUTION_EVENT, channel, finished
    )


async def test_a_result_published_with_the_original_helper_arrives_as_a_node_execution_event(
    alice_client: Any, alice: Any
) -> None:
    await send_execution_result(make_result(graph_exec_id="exec-1"))
    await send(alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1"})
    result = make_result(graph_exec_id="exec-1", node_id="node-2")

    await send_execution_result(result)

    # Its user_id is the graph's owner: the original result names none.
    as_node_event = NodeExecutionEvent(user_id=str(alice.pk), **result.model_dump())
    channel = f"{alice.pk}|graph_exec#exec-1"
    assert await alice_client.receive_from(timeout=5) == autogpt_frame(
        Methods.NODE_EXECUTION_EVENT, channel, as_node_event
    )


async def test_events_of_other_executions_of_the_graph_do_not_arrive(
    alice_client: Any, alice: Any
) -> None:
    user_id = str(alice.pk)
    await send_node_execution_event(node_event(user_id))
    await send(alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1"})

    await send_node_execution_event(node_event(user_id, graph_exec_id="exec-2"))
    await send_graph_execution_event(graph_event(user_id, graph_exec_id="exec-2"))
    await send_execution_result(make_result(graph_exec_id="exec-2"))
    mine = node_event(user_id, node_id="node-9")
    await send_node_execution_event(mine)

    channel = f"{user_id}|graph_exec#exec-1"
    assert await alice_client.receive_from(timeout=5) == autogpt_frame(
        Methods.NODE_EXECUTION_EVENT, channel, mine
    )
    assert await alice_client.receive_nothing(timeout=0.3)


# Subscribing to every execution of a graph.


async def test_subscribe_graph_executions_gets_the_graph_events_of_every_execution(
    alice_client: Any, alice: Any
) -> None:
    user_id = str(alice.pk)
    ack = await send(alice_client, "subscribe_graph_executions", {"graph_id": "test_graph"})
    assert ack == {
        "method": "subscribe_graph_executions",
        "data": None,
        "success": True,
        "channel": f"{user_id}|graph#test_graph|executions",
        "error": None,
    }
    first, second = graph_event(user_id, "exec-1"), graph_event(user_id, "exec-2")

    await send_graph_execution_event(first)
    await send_node_execution_event(node_event(user_id, "exec-2"))  # node events: not here
    await send_graph_execution_event(second)

    channel = f"{user_id}|graph#test_graph|executions"
    assert await alice_client.receive_from(timeout=5) == autogpt_frame(
        Methods.GRAPH_EXECUTION_EVENT, channel, first
    )
    assert await alice_client.receive_from(timeout=5) == autogpt_frame(
        Methods.GRAPH_EXECUTION_EVENT, channel, second
    )
    assert await alice_client.receive_nothing(timeout=0.3)


# Both protocols on one connection.


async def test_one_connection_may_follow_a_graph_both_ways(alice_client: Any, alice: Any) -> None:
    user_id = str(alice.pk)
    await send_node_execution_event(node_event(user_id))
    await send(alice_client, "subscribe", {"graph_id": "test_graph"})
    await send(alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1"})
    event = node_event(user_id, status=ExecutionStatus.COMPLETED)
    finished = graph_event(user_id)

    await send_node_execution_event(event)
    await send_graph_execution_event(finished)

    received = [await alice_client.receive_from(timeout=5) for _ in range(3)]
    assert received == [
        # The original protocol's subscriber gets the node event as the result it carries...
        WsMessage(
            method=Methods.EXECUTION_EVENT, channel="test_graph", data=event.result().model_dump()
        ).model_dump_json(),
        autogpt_frame(Methods.NODE_EXECUTION_EVENT, f"{user_id}|graph_exec#exec-1", event),
        # ...and no graph event: the original protocol has none.
        autogpt_frame(Methods.GRAPH_EXECUTION_EVENT, f"{user_id}|graph_exec#exec-1", finished),
    ]
    assert await alice_client.receive_nothing(timeout=0.3)


# Who may subscribe.


async def test_another_users_execution_is_refused_exactly_like_a_missing_one(
    connect: Any, alice: Any, bob: Any, channel_layer: Any
) -> None:
    from executions.tokens import mint_token

    await send_node_execution_event(node_event(str(alice.pk), graph_exec_id="alices-run"))
    client = await connect(token=mint_token(bob).token)

    someone_elses = await send(client, "subscribe_graph_execution", {"graph_exec_id": "alices-run"})
    missing = await send(client, "subscribe_graph_execution", {"graph_exec_id": "no-such-run"})

    assert someone_elses == {
        "method": "error",
        "data": None,
        "success": False,
        "channel": f"{bob.pk}|graph_exec#alices-run",
        "error": "Graph execution not found.",
    }
    assert missing == {**someone_elses, "channel": f"{bob.pk}|graph_exec#no-such-run"}
    assert await group_members(channel_layer, graphs_only=True) == {}


async def test_another_users_graph_executions_are_refused(
    connect: Any, alice: Any, bob: Any
) -> None:
    from executions.tokens import mint_token

    client = await connect(token=mint_token(bob).token)

    reply = await send(client, "subscribe_graph_executions", {"graph_id": "test_graph"})

    assert reply == {
        "method": "error",
        "data": None,
        "success": False,
        "channel": f"{bob.pk}|graph#test_graph|executions",
        "error": "Not allowed to subscribe to this graph.",
    }
    await send_graph_execution_event(graph_event(str(alice.pk)))
    assert await client.receive_nothing(timeout=0.3)


# Resuming and snapshots: the graph's sequence numbers, as in the original protocol.


async def test_since_replays_only_that_executions_events_numbered_by_the_graph(
    alice_client: Any, alice: Any
) -> None:
    user_id = str(alice.pk)
    mine = [node_event(user_id, node_id=f"node-{n}") for n in range(3)]
    await send_node_execution_event(mine[0])  # seq 1
    await send_node_execution_event(node_event(user_id, graph_exec_id="exec-2"))  # seq 2
    await send_node_execution_event(mine[1])  # seq 3
    await send_graph_execution_event(graph_event(user_id, graph_exec_id="exec-2"))  # seq 4
    await send_node_execution_event(mine[2])  # seq 5

    ack = await send(
        alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1", "since": 1}
    )

    assert ack["data"] == {"head": 5, "oldest": 1, "truncated": False}
    channel = f"{user_id}|graph_exec#exec-1"
    for seq, event in ((3, mine[1]), (5, mine[2])):
        frame = autogpt_frame(Methods.NODE_EXECUTION_EVENT, channel, event)
        assert await alice_client.receive_from(timeout=5) == f'{frame[:-1]},"seq":{seq}}}'
    live = node_event(user_id, node_id="node-live")
    await send_node_execution_event(live)  # seq 6
    frame = autogpt_frame(Methods.NODE_EXECUTION_EVENT, channel, live)
    assert await alice_client.receive_from(timeout=5) == f'{frame[:-1]},"seq":6}}'


async def test_snapshot_sends_the_latest_of_each_node_and_of_the_execution(
    alice_client: Any, alice: Any
) -> None:
    user_id = str(alice.pk)
    await send_node_execution_event(node_event(user_id, status=ExecutionStatus.QUEUED))
    await send_node_execution_event(node_event(user_id, node_id="node-2"))
    await send_graph_execution_event(graph_event(user_id, status=ExecutionStatus.RUNNING))
    node_1_done = node_event(user_id, status=ExecutionStatus.COMPLETED)
    await send_node_execution_event(node_1_done)  # seq 4
    await send_node_execution_event(node_event(user_id, graph_exec_id="exec-2"))  # seq 5

    ack = await send(
        alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1", "snapshot": True}
    )

    assert ack["data"] == {"head": 5, "oldest": 1, "truncated": False}
    frames = [json.loads(await alice_client.receive_from(timeout=5)) for _ in range(3)]
    assert [(frame["method"], frame["seq"]) for frame in frames] == [
        ("node_execution_event", 2),
        ("graph_execution_event", 3),
        ("node_execution_event", 4),
    ]
    assert frames[2]["data"]["status"] == "COMPLETED"
    assert await alice_client.receive_nothing(timeout=0.3)


# Unsubscribing.


async def test_unsubscribe_by_graph_exec_id_answers_with_the_channel_and_stops_the_events(
    alice_client: Any, alice: Any, channel_layer: Any
) -> None:
    user_id = str(alice.pk)
    await send_node_execution_event(node_event(user_id))
    await send(alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1"})

    await alice_client.send_json_to({"method": "unsubscribe", "data": {"graph_exec_id": "exec-1"}})

    assert await alice_client.receive_from(timeout=5) == (
        '{"method":"unsubscribe","data":null,"success":true,'
        f'"channel":"{user_id}|graph_exec#exec-1","error":null}}'
    )
    assert await group_members(channel_layer, graphs_only=True) == {}
    await send_node_execution_event(node_event(user_id))
    assert await alice_client.receive_nothing(timeout=0.3)


async def test_unsubscribe_by_channel_ends_a_graph_executions_subscription(
    alice_client: Any, alice: Any
) -> None:
    channel = f"{alice.pk}|graph#test_graph|executions"
    await send(alice_client, "subscribe_graph_executions", {"graph_id": "test_graph"})

    reply = await send(alice_client, "unsubscribe", {"channel": channel})

    assert reply == {
        "method": "unsubscribe",
        "data": None,
        "success": True,
        "channel": channel,
        "error": None,
    }
    await send_graph_execution_event(graph_event(str(alice.pk)))
    assert await alice_client.receive_nothing(timeout=0.3)


async def test_leaving_one_protocol_keeps_the_other_subscription_of_the_graph(
    alice_client: Any, alice: Any
) -> None:
    user_id = str(alice.pk)
    await send_node_execution_event(node_event(user_id))
    await send(alice_client, "subscribe", {"graph_id": "test_graph"})
    await send(alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1"})
    await send(alice_client, "unsubscribe", {"graph_id": "test_graph"})
    event = node_event(user_id, node_id="node-after")

    await send_node_execution_event(event)

    assert await alice_client.receive_from(timeout=5) == autogpt_frame(
        Methods.NODE_EXECUTION_EVENT, f"{user_id}|graph_exec#exec-1", event
    )


# Errors answer as for the original protocol.


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (None, "Subscription data missing"),
        ({"graph_id": "test_graph"}, "Subscription data missing"),
        (
            {"graph_exec_id": 7},
            "graph_exec_id must be a non-empty string of at most 255 characters, "
            "without NUL or lone surrogates.",
        ),
        (
            {"graph_exec_id": "exec-1", "since": -1},
            "since must be a non-negative integer (a sequence number).",
        ),
    ],
)
async def test_bad_subscribe_graph_execution_data_gets_an_error_frame(
    alice_client: Any, data: Any, error: str
) -> None:
    reply = await send(alice_client, "subscribe_graph_execution", data)

    assert reply == {
        "method": "error",
        "data": None,
        "success": False,
        "channel": None,
        "error": error,
    }
    pong = await send(alice_client, "heartbeat", "ping")
    assert pong["data"] == "pong"  # the connection goes on


@pytest.mark.parametrize("method", ["graph_execution_event", "node_execution_event"])
async def test_server_methods_sent_by_a_client_are_not_processed(
    alice_client: Any, method: str
) -> None:
    reply = await send(alice_client, method, {})

    assert reply["error"] == "Message type is not processed by the server"


# Publishing.


async def test_a_rolled_back_graph_event_is_neither_stored_nor_sent(
    alice_client: Any, alice: Any
) -> None:
    user_id = str(alice.pk)
    await send_node_execution_event(node_event(user_id))
    await send(alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1"})

    def publish_then_fail() -> None:
        with transaction.atomic():
            send_graph_execution_event_sync(graph_event(user_id))
            raise RuntimeError("the task failed")

    from asgiref.sync import sync_to_async

    with pytest.raises(RuntimeError):
        await sync_to_async(publish_then_fail)()
    kept = graph_event(user_id, status=ExecutionStatus.FAILED)
    seqs = await send_execution_results([kept])

    assert seqs == [2]
    frame = await alice_client.receive_from(timeout=5)
    assert frame == autogpt_frame(
        Methods.GRAPH_EXECUTION_EVENT, f"{user_id}|graph_exec#exec-1", kept
    )


async def test_the_ingest_endpoint_takes_results_and_both_autogpt_events_in_one_batch(
    application: Any, settings: Any, alice_client: Any, alice: Any
) -> None:
    settings.EXECUTIONS_INGEST_TOKEN = INGEST_TOKEN
    user_id = str(alice.pk)
    node = node_event(user_id)
    finished = graph_event(user_id)
    result = make_result(graph_exec_id="exec-1", node_id="node-3")
    body = [
        json.loads(node.model_dump_json()),
        json.loads(finished.model_dump_json()),
        json.loads(result.model_dump_json()),
    ]
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        first = await http.post(
            "/api/executions",
            json=body[0],
            headers={"Authorization": f"Bearer {INGEST_TOKEN}"},
        )
        await send(alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1"})
        response = await http.post(
            "/api/executions",
            json=body,
            headers={"Authorization": f"Bearer {INGEST_TOKEN}"},
        )

    assert (first.status_code, response.status_code) == (202, 202)
    assert response.json() == {"accepted": 3}
    channel = f"{user_id}|graph_exec#exec-1"
    as_node = NodeExecutionEvent(user_id=user_id, **result.model_dump())
    # What AutoGPT would send for the same JSON: the stats it names are floats now.
    posted = GraphExecutionEvent.model_validate(body[1])
    assert [await alice_client.receive_from(timeout=5) for _ in range(3)] == [
        autogpt_frame(Methods.NODE_EXECUTION_EVENT, channel, node),
        autogpt_frame(Methods.GRAPH_EXECUTION_EVENT, channel, posted),
        autogpt_frame(Methods.NODE_EXECUTION_EVENT, channel, as_node),
    ]


@pytest.mark.parametrize("escaped", [False, True])
async def test_the_ingest_endpoint_tells_an_event_by_its_event_type_even_escaped(
    application: Any, settings: Any, alice: Any, escaped: bool
) -> None:
    # A body naming no "event_type" skips the tagged union; a key spelled with a JSON escape
    # must not pass for such a body.
    settings.EXECUTIONS_INGEST_TOKEN = INGEST_TOKEN
    body = node_event(str(alice.pk)).model_dump_json()
    if escaped:
        body = body.replace('"event_type"', '"event_typ\\u0065"')
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        response = await http.post(
            "/api/executions",
            content=body,
            headers={"Authorization": f"Bearer {INGEST_TOKEN}"},
        )

    assert response.status_code == 202
    stored = await sync_to_async(ExecutionEvent.objects.get)(graph_id="test_graph")
    assert (stored.kind, stored.user_id) == ("node", str(alice.pk))


async def test_the_ingest_endpoint_names_the_bad_field_of_an_event(
    application: Any, settings: Any
) -> None:
    settings.EXECUTIONS_INGEST_TOKEN = INGEST_TOKEN
    bad = {**json.loads(graph_event("u").model_dump_json()), "status": "EXPLODED"}
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        response = await http.post(
            "/api/executions", json=bad, headers={"Authorization": f"Bearer {INGEST_TOKEN}"}
        )

    assert response.status_code == 400
    assert response.json()["error"].startswith("Invalid request body: status: ")


# What a connection holds, whatever happens to a subscription.


async def test_a_subscribe_that_fails_during_its_catch_up_leaves_no_fan_out_membership(
    alice_client: Any, alice: Any, channel_layer: Any
) -> None:
    await send_node_execution_event(node_event(str(alice.pk)))
    # A row no frame can be made of: the replay fails after the acknowledgement.
    await sync_to_async(ExecutionEvent.objects.filter(graph_id="test_graph").update)(
        frame="not a stored frame"
    )

    ack = await send(
        alice_client, "subscribe_graph_execution", {"graph_exec_id": "exec-1", "since": 0}
    )
    with pytest.raises(ValueError, match="substring not found"):
        await alice_client.receive_from(timeout=5)
    alice_client.crashed_as_expected = True

    assert ack["success"] is True
    assert "test_graph" not in local_fanout(channel_layer).members


async def test_an_execution_id_found_in_two_graphs_stays_with_the_graph_it_started_in(
    alice_client: Any, alice: Any
) -> None:
    user_id = str(alice.pk)
    await sync_to_async(Graph.objects.create)(pk="later_graph", owner=alice)
    for run in range(4):
        await send_node_execution_event(node_event(user_id, graph_exec_id=f"run-{run}"))
    first = node_event(user_id, graph_exec_id="shared-id", node_id="first")
    await send_node_execution_event(first)  # seq 5 of test_graph
    # Seq 1 of another graph: lower, but stored later.
    await send_node_execution_event(
        node_event(user_id, graph_exec_id="shared-id", graph_id="later_graph")
    )

    ack = await send(
        alice_client, "subscribe_graph_execution", {"graph_exec_id": "shared-id", "since": 0}
    )

    assert ack["data"] == {"head": 5, "oldest": 1, "truncated": False}
    channel = f"{user_id}|graph_exec#shared-id"
    frame = autogpt_frame(Methods.NODE_EXECUTION_EVENT, channel, first)
    assert await alice_client.receive_from(timeout=5) == f'{frame[:-1]},"seq":5}}'
    assert await alice_client.receive_nothing(timeout=0.3)
