"""Limits, metrics, structured logs and the ingest answer while the layer is down.

The WebSocket tests run the real ASGI app (project.asgi.application) through channels'
WebsocketCommunicator on the real in-memory channel layer; settings are lowered with
pytest-django's ``settings`` fixture before connecting, since a connection reads its limits
when it opens. The last log test runs a daphne subprocess and reads what it printed.
"""

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.test import AsyncClient, Client
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from executions import history
from executions.events import send_execution_result, send_execution_results
from executions.fanout import LocalFanout
from executions.layers import channel_layer_config
from executions.limits import open_connections
from executions.models import Graph
from executions.protocol import ErrorText
from executions.tokens import mint_token
from tests.conftest import make_result, subscribe
from tests.servers import DaphneServer, prepare_site
from tests.support import free_port

pytestmark = pytest.mark.django_db(transaction=True)

PING = '{"method":"heartbeat","data":"ping"}'
PONG = '{"method":"heartbeat","data":"pong","success":true,"channel":null,"error":null}'
RECEIVE_TIMEOUT = 5.0


def error(text: str, channel: str | None = None) -> str:
    return json.dumps(
        {"method": "error", "data": None, "success": False, "channel": channel, "error": text},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def ack(method: str, graph_id: str) -> str:
    return json.dumps(
        {"method": method, "data": None, "success": True, "channel": graph_id, "error": None},
        separators=(",", ":"),
        ensure_ascii=False,
    )


async def assert_still_serving(client: Any) -> None:
    await client.send_to(text_data=PING)
    assert await client.receive_from(timeout=RECEIVE_TIMEOUT) == PONG


async def assert_closed_with(client: Any, code: int) -> dict[str, Any]:
    closed: dict[str, Any] = await client.receive_output(timeout=RECEIVE_TIMEOUT)
    assert closed["type"] == "websocket.close", closed
    assert closed["code"] == code, closed
    return closed


async def token_for(user: Any) -> str:
    return await sync_to_async(lambda: mint_token(user).token)()


@pytest.fixture
def raised_rate_limits(settings: Any) -> None:
    """Rate limits no test below comes near, for tests that send thousands of messages."""
    settings.EXECUTIONS_MESSAGES_PER_SECOND = 100_000
    settings.EXECUTIONS_MESSAGE_BURST = 100_000


# --- messages per second ------------------------------------------------------------------

RATE = 1
BURST = 5
RATE_LIMITED = ErrorText.RATE_LIMITED.format(rate=RATE)


@pytest.fixture
def low_rate_limits(settings: Any) -> None:
    settings.EXECUTIONS_MESSAGES_PER_SECOND = RATE
    settings.EXECUTIONS_MESSAGE_BURST = BURST


def test_the_rate_limit_error_text_names_the_rate() -> None:
    assert RATE_LIMITED == "Too many messages: at most 1 a second; this one was ignored."


async def test_messages_past_the_burst_each_get_an_error_frame_and_are_ignored(
    low_rate_limits: None, connect: Any, alice_token: str
) -> None:
    client = await connect(token=alice_token)
    excess = 3

    for _ in range(BURST + excess):
        await client.send_to(text_data=PING)

    replies = [await client.receive_from(timeout=RECEIVE_TIMEOUT) for _ in range(BURST + excess)]
    assert replies == [PONG] * BURST + [error(RATE_LIMITED)] * excess
    # Ignored, not closed: nothing more arrives, and once a token is back it is served again.
    assert await client.receive_nothing(timeout=0.2)
    await asyncio.sleep(1.2 / RATE)
    await assert_still_serving(client)


async def test_a_client_that_keeps_flooding_is_closed_with_4029(
    low_rate_limits: None, connect: Any, alice_token: str, result_factory: Any
) -> None:
    well_behaved = await connect(token=alice_token)
    flooder = await connect(token=alice_token)

    for _ in range(20 * BURST):
        await flooder.send_to(text_data=PING)

    frames: list[str] = []
    while True:
        output = await flooder.receive_output(timeout=RECEIVE_TIMEOUT)
        if output["type"] == "websocket.close":
            break
        frames.append(output["text"])
        assert len(frames) <= 20 * BURST, "the flooding client was never closed"
    assert output["code"] == 4029
    assert output["reason"] == "Rate limit exceeded again and again: closing."
    assert frames[:BURST] == [PONG] * BURST
    refused = frames[BURST:-1]
    assert refused, "no message was refused with an error frame before the close"
    assert set(refused) == {error(RATE_LIMITED)}
    assert frames[-1] == error("Rate limit exceeded again and again: closing.")

    # The other client of the same user and process is served as before.
    await assert_still_serving(well_behaved)
    assert await subscribe(well_behaved, "test_graph") == json.loads(ack("subscribe", "test_graph"))
    result = result_factory()
    await send_execution_result(result)
    event = await well_behaved.receive_json_from(timeout=RECEIVE_TIMEOUT)
    assert event["method"] == "execution_event"
    assert event["data"]["node_exec_id"] == result.node_exec_id


# --- subscriptions per connection ---------------------------------------------------------


async def test_subscriptions_per_connection_are_limited(
    settings: Any, connect: Any, make_user: Callable[..., Any], result_factory: Any
) -> None:
    settings.EXECUTIONS_MAX_SUBSCRIPTIONS_PER_CONNECTION = 3
    graphs = [f"carol-graph-{index}" for index in range(5)]
    carol = await sync_to_async(make_user)("carol", graphs=tuple(graphs))
    client = await connect(token=await token_for(carol))
    too_many = "Too many subscriptions: at most 3 per connection; unsubscribe from one first."

    for graph_id in graphs[:3]:
        await client.send_json_to({"method": "subscribe", "data": {"graph_id": graph_id}})
        assert await client.receive_from(timeout=RECEIVE_TIMEOUT) == ack("subscribe", graph_id)

    await client.send_json_to({"method": "subscribe", "data": {"graph_id": graphs[3]}})
    assert await client.receive_from(timeout=RECEIVE_TIMEOUT) == error(too_many, graphs[3])
    # The refused subscription receives nothing.
    await send_execution_result(result_factory(graph_id=graphs[3]))
    assert await client.receive_nothing(timeout=0.3)

    # A graph already subscribed to is still acknowledged: it takes no new place.
    await client.send_json_to({"method": "subscribe", "data": {"graph_id": graphs[0]}})
    assert await client.receive_from(timeout=RECEIVE_TIMEOUT) == ack("subscribe", graphs[0])
    await client.send_json_to(
        {"method": "subscribe", "data": {"graph_id": graphs[0], "snapshot": True}}
    )
    assert json.loads(await client.receive_from(timeout=RECEIVE_TIMEOUT))["success"] is True

    # After an unsubscribe there is room for one more, and only one.
    await client.send_json_to({"method": "unsubscribe", "data": {"graph_id": graphs[1]}})
    assert await client.receive_from(timeout=RECEIVE_TIMEOUT) == ack("unsubscribe", graphs[1])
    await client.send_json_to({"method": "subscribe", "data": {"graph_id": graphs[3]}})
    assert await client.receive_from(timeout=RECEIVE_TIMEOUT) == ack("subscribe", graphs[3])
    await client.send_json_to({"method": "subscribe", "data": {"graph_id": graphs[4]}})
    assert await client.receive_from(timeout=RECEIVE_TIMEOUT) == error(too_many, graphs[4])

    result = result_factory(graph_id=graphs[3])
    await send_execution_result(result)
    event = await client.receive_json_from(timeout=RECEIVE_TIMEOUT)
    assert (event["channel"], event["data"]["node_exec_id"]) == (graphs[3], result.node_exec_id)


# --- connections per user and per process -------------------------------------------------


async def test_connections_per_user_are_limited(
    settings: Any, connect: Any, alice: Any, alice_token: str, make_user: Callable[..., Any]
) -> None:
    # The counter is process-wide and keyed by primary key, which a new test database reuses:
    # leave room for exactly two more connections of alice's.
    limit = open_connections.per_user.get(alice.pk, 0) + 2
    settings.EXECUTIONS_MAX_CONNECTIONS_PER_USER = limit
    first = await connect(token=alice_token)
    second = await connect(token=alice_token)

    third = await connect(token=alice_token)  # accepted, then told why and closed
    assert await third.receive_from(timeout=RECEIVE_TIMEOUT) == error(
        f"Too many connections for this user: at most {limit}."
    )
    closed = await assert_closed_with(third, 4030)
    assert closed["reason"] == f"Too many connections for this user: at most {limit}."

    bob = await sync_to_async(make_user)("bob", graphs=("bobs-graph",))
    bobs_client = await connect(token=await token_for(bob))
    await assert_still_serving(bobs_client)
    await assert_still_serving(second)

    await first.disconnect(timeout=RECEIVE_TIMEOUT)
    again = await connect(token=alice_token)
    await assert_still_serving(again)
    assert await subscribe(again, "test_graph") == json.loads(ack("subscribe", "test_graph"))


async def test_connections_per_process_are_limited(
    settings: Any, connect: Any, alice_token: str, make_user: Callable[..., Any]
) -> None:
    # The counter is process-wide: leave room for exactly two more connections.
    settings.EXECUTIONS_MAX_CONNECTIONS = open_connections.total + 2
    bob = await sync_to_async(make_user)("bob")
    first = await connect(token=alice_token)
    await connect(token=await token_for(bob))

    third = await connect(token=alice_token)
    assert await third.receive_from(timeout=RECEIVE_TIMEOUT) == error(
        "This server is at its connection limit; try again later."
    )
    closed = await assert_closed_with(third, 4013)
    assert closed["reason"] == "This server is at its connection limit; try again later."

    await first.disconnect(timeout=RECEIVE_TIMEOUT)
    again = await connect(token=await token_for(bob))
    await assert_still_serving(again)


# --- auth abuse: thousands of graph ids -----------------------------------------------------

BOB_GRAPHS = 1000
MISSING_GRAPHS = 1000


async def test_thousands_of_foreign_graph_ids_are_refused_alike_and_leak_nothing(
    raised_rate_limits: None,
    connect: Any,
    alice_token: str,
    make_user: Callable[..., Any],
    result_factory: Any,
) -> None:
    bob = await sync_to_async(make_user)("bob")
    bobs = [f"bob-graph-{index:04d}" for index in range(BOB_GRAPHS)]
    await sync_to_async(Graph.objects.bulk_create)([Graph(pk=g, owner=bob) for g in bobs])
    # Bob's graphs have history: a subscription with since or snapshot would replay it.
    await send_execution_results([result_factory(graph_id=g) for g in bobs[:20]])
    missing = [f"no-such-graph-{index:04d}" for index in range(MISSING_GRAPHS)]
    graph_ids = [g for pair in zip(bobs, missing, strict=True) for g in pair]
    shapes: list[dict[str, Any]] = [{}, {"since": 0}, {"snapshot": True}]
    client = await connect(token=alice_token)

    for index, graph_id in enumerate(graph_ids):
        data = {"graph_id": graph_id, **shapes[index % len(shapes)]}
        await client.send_json_to({"method": "subscribe", "data": data})
    replies = [await client.receive_from(timeout=RECEIVE_TIMEOUT) for _ in graph_ids]

    refused = "Not allowed to subscribe to this graph."
    assert replies == [error(refused, graph_id) for graph_id in graph_ids]
    # Apart from echoing the id sent, the answer is one and the same text for all of them.
    pairs = zip(replies, graph_ids, strict=True)
    anonymized = {reply.replace(json.dumps(graph_id), '"<id>"') for reply, graph_id in pairs}
    assert anonymized == {error(refused, "<id>")}

    await send_execution_results([result_factory(graph_id=g) for g in bobs[:5] + bobs[-5:]])
    assert await client.receive_nothing(timeout=0.5)
    await assert_still_serving(client)


# --- metrics --------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape() -> Samples:
    """Every sample GET /metrics exposes, keyed by name and labels."""
    response = await sync_to_async(Client().get)("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_connections_subscriptions_events_and_errors(
    connect: Any, alice_token: str, result_factory: Any
) -> None:
    watched = {
        "connections": ("executions_connections", {}),
        "subscriptions": ("executions_subscriptions", {}),
        "delivered": ("executions_frames_delivered_total", {}),
        "published": ("executions_events_published_total", {}),
        "not_json": ("executions_error_frames_total", {"kind": "not_json"}),
    }

    def values(samples: Samples) -> dict[str, float]:
        return {key: value(samples, name, **labels) for key, (name, labels) in watched.items()}

    before = values(await scrape())
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")
    await send_execution_result(result_factory())
    assert (await client.receive_json_from(timeout=RECEIVE_TIMEOUT))["method"] == "execution_event"
    await client.send_to(text_data="not json")
    assert await client.receive_from(timeout=RECEIVE_TIMEOUT) == error(ErrorText.NOT_JSON)

    during = values(await scrape())
    assert {key: during[key] - before[key] for key in watched} == {
        "connections": 1,
        "subscriptions": 1,
        "delivered": 1,
        "published": 1,
        "not_json": 1,
    }

    await client.disconnect(timeout=RECEIVE_TIMEOUT)
    after = values(await scrape())
    assert after["connections"] == before["connections"]
    assert after["subscriptions"] == before["subscriptions"]


class Receiving:
    """A fan-out member that writes `frames` frames at once for each event it is given."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.events: list[dict[str, Any]] = []

    def enqueue(self, event: dict[str, Any]) -> int:
        self.events.append(event)
        return self.frames


async def test_a_hand_out_counts_every_frame_written_at_once_and_its_latency_once(
    channel_layer: Any,
) -> None:
    fanout = LocalFanout(channel_layer)
    members = [Receiving(2), Receiving(0), Receiving(1)]  # the second keeps it for later
    fanout.members["counted"] = set(members)
    before = await scrape()

    fanout.hand_out({"graph_id": "counted", "seq": 1, "published_at": time.time()})

    after = await scrape()
    assert all(len(member.events) == 1 for member in members)
    delivered = "executions_frames_delivered_total"
    observed = "executions_publish_to_send_seconds_count"
    assert value(after, delivered) - value(before, delivered) == 3
    assert value(after, observed) - value(before, observed) == 1


# --- structured logs, without tokens --------------------------------------------------------


def forged(token: str) -> str:
    """The token with its last character changed: its signature no longer matches."""
    return token[:-1] + ("B" if token.endswith("A") else "A")


def secrets_of(token: str) -> list[str]:
    """The token, and its signature alone (the part after the last separator)."""
    return [token, token.rsplit(".", 1)[-1]]


async def test_connect_refusal_disconnect_and_auth_failure_are_logged_without_tokens(
    caplog: pytest.LogCaptureFixture,
    connect: Any,
    alice: Any,
    alice_token: str,
    make_user: Callable[..., Any],
) -> None:
    await sync_to_async(make_user)("bob", graphs=("bobs-graph",))
    bad_token = forged(alice_token)
    caplog.set_level(logging.DEBUG)  # every logger, not just ours, must keep tokens out
    caplog.set_level(logging.INFO, logger="executions")

    client = await connect(token=alice_token)
    await client.send_json_to({"method": "subscribe", "data": {"graph_id": "bobs-graph"}})
    assert await client.receive_from(timeout=RECEIVE_TIMEOUT) == error(
        "Not allowed to subscribe to this graph.", "bobs-graph"
    )
    await client.disconnect(timeout=RECEIVE_TIMEOUT)
    refused = await connect(token=bad_token)
    assert await refused.receive_from(timeout=RECEIVE_TIMEOUT) == error("Invalid token")
    await assert_closed_with(refused, 4001)

    ours = [record for record in caplog.records if record.name.startswith("executions")]
    events = [getattr(record, "event", None) for record in ours]
    expected = [
        "websocket.connect",
        "websocket.subscribe_refused",
        "websocket.disconnect",
        "websocket.auth_failure",
    ]
    assert [event for event in events if event in expected] == expected, events
    by_event = {getattr(record, "event", None): record for record in ours}
    for event in expected[:3]:
        assert getattr(by_event[event], "user_id", None) == alice.pk, event
    assert getattr(by_event["websocket.auth_failure"], "reason", None) == "Invalid token"

    for record in caplog.records:
        texts = [record.getMessage(), *(repr(value) for value in vars(record).values())]
        for secret in secrets_of(alice_token) + secrets_of(bad_token):
            leaks = [text for text in texts if secret in text]
            assert not leaks, f"a token is in the log record {record.name}: {leaks}"


async def close_code(client: Any) -> int:
    """Read until the server closes the connection; return its close code."""
    closed: ConnectionClosed | None = None
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        while closed is None:
            try:
                await client.recv()
            except ConnectionClosed as exc:
                closed = exc
    assert closed.rcvd is not None, f"the server sent no close frame: {closed!r}"
    return closed.rcvd.code


def wait_for_output(server: DaphneServer, text: str, seconds: float = 5.0) -> None:
    """Wait, bounded, until the server has printed `text`; the caller checks it did."""
    deadline = time.monotonic() + seconds
    while text not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)


async def test_daphne_prints_no_token(tmp_path: Path) -> None:
    """Over a real daphne process, whose logging is on: nothing it prints holds the token."""
    site = await asyncio.to_thread(prepare_site, tmp_path)
    token = await asyncio.to_thread(site.token_for, "alice")
    await asyncio.to_thread(site.register_graph, "alices-graph", "alice")
    bad_token = forged(token)
    env = {**site.env, "EXECUTIONS_LOG_LEVEL": "DEBUG"}
    server = DaphneServer(env, tmp_path, "log-check")
    await asyncio.to_thread(server.__enter__)
    try:
        async with ws_connect(f"{server.ws_url}?token={token}", open_timeout=5) as client:
            await client.send(json.dumps({"method": "subscribe", "data": {"graph_id": "x"}}))
            assert await asyncio.wait_for(client.recv(), 5) == error(
                "Not allowed to subscribe to this graph.", "x"
            )
            await client.send(
                json.dumps({"method": "subscribe", "data": {"graph_id": "alices-graph"}})
            )
            assert await asyncio.wait_for(client.recv(), 5) == ack("subscribe", "alices-graph")
        async with ws_connect(f"{server.ws_url}?token={bad_token}", open_timeout=5) as client:
            assert await close_code(client) == 4001
        # The disconnect is logged once daphne has seen the socket go.
        await asyncio.to_thread(wait_for_output, server, "websocket.disconnect")
    finally:
        await asyncio.to_thread(server.stop)

    output = server.output()
    # The logs were on and went to the captured output: the check below is not vacuous.
    for event in ("websocket.connect", "websocket.subscribe_refused", "websocket.disconnect"):
        assert event in output, f"{event} is not in daphne's output:\n{output}"
    assert "websocket.auth_failure" in output, output
    assert "WSCONNECT" in output, f"daphne's access log is off:\n{output}"
    for secret in secrets_of(token) + secrets_of(bad_token):
        assert secret not in output, f"a token is in daphne's output:\n{output}"


# --- ingest while the channel layer is down -------------------------------------------------

INGEST_TOKEN = "ingest-token-for-the-limits-tests-0123456789"


async def test_ingest_answers_503_while_the_layer_is_down_and_stores_the_event_once(
    settings: Any,
) -> None:
    settings.EXECUTIONS_INGEST_TOKEN = INGEST_TOKEN
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings.CHANNEL_LAYERS = {"default": channel_layer_config(dead_redis, "pubsub")}
    result = make_result(graph_id="outage-graph", node_exec_id="during-the-outage")

    response = await AsyncClient().post(
        "/api/executions",
        data=result.model_dump_json(),
        content_type="application/json",
        headers={"Authorization": f"Bearer {INGEST_TOKEN}"},
    )

    assert response.status_code == 503, response.content
    body = response.json()
    assert body["stored"] == [{"graph_id": "outage-graph", "seq": 1}]
    assert "stored" in body["error"]
    assert "do not publish them again" in body["error"].lower()
    stored = await database_sync_to_async(history.events_after)("outage-graph", 0, 100)
    assert [event.seq for event in stored] == [1]
    assert stored[0].result()["node_exec_id"] == "during-the-outage"
