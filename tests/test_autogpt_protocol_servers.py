"""AutoGPT's current protocol under real servers: daphne and uvicorn on the in-memory layer, and
two daphne processes on Redis, with the `websockets` client and httpx-sse, byte for byte.

Everything is published through the ingest endpoint as JSON; the expected frames are what
AutoGPT's ConnectionManager sends for the same JSON.
"""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from executions.schemas import GraphExecutionEvent, Methods, NodeExecutionEvent
from tests.conftest import make_result
from tests.servers import (
    DaphneServer,
    Site,
    UvicornServer,
    post_executions,
    prepare_site,
    redis_server_pairs,
)
from tests.test_autogpt_protocol import autogpt_frame, graph_event, node_event
from tests.test_faults import SLOW_DISCONNECTS, metrics, settings_env

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    prepared = prepare_site(tmp_path_factory.mktemp("autogpt-site"))
    prepared.token_for("alice")
    prepared.token_for("bob")
    return prepared


@pytest.fixture(scope="module")
def alice_id(site: Site) -> str:
    shell = (
        "from django.contrib.auth.models import User; print(User.objects.get(username='alice').pk)"
    )
    return site.manage("shell", "-c", shell).stdout.strip().splitlines()[-1]


@pytest.fixture(params=[DaphneServer, UvicornServer], ids=["daphne", "uvicorn"])
def server(site: Site, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DaphneServer]:
    with request.param(site.env, tmp_path, name=request.param.__name__) as running:
        yield running


class Run:
    """One execution of a new graph of Alice's, and the JSON its events are published as."""

    def __init__(self, site: Site, user_id: str) -> None:
        self.graph_id = f"autogpt-{uuid.uuid4().hex[:10]}"
        self.exec_id = f"run-{uuid.uuid4().hex[:10]}"
        self.user_id = user_id
        site.register_graph(self.graph_id, "alice")

    def node(self, **overrides: Any) -> dict[str, Any]:
        event = node_event(self.user_id, self.exec_id, graph_id=self.graph_id, **overrides)
        return json.loads(event.model_dump_json())

    def finished(self, **overrides: Any) -> dict[str, Any]:
        event = graph_event(self.user_id, self.exec_id, graph_id=self.graph_id, **overrides)
        return json.loads(event.model_dump_json())

    def result(self, **overrides: Any) -> dict[str, Any]:
        result = make_result(graph_id=self.graph_id, graph_exec_id=self.exec_id, **overrides)
        return json.loads(result.model_dump_json())

    @property
    def execution_channel(self) -> str:
        return f"{self.user_id}|graph_exec#{self.exec_id}"

    @property
    def executions_channel(self) -> str:
        return f"{self.user_id}|graph#{self.graph_id}|executions"

    def node_frame(self, body: dict[str, Any]) -> str:
        """AutoGPT's frame for a node event (or a result, which gets the owner's id)."""
        event = NodeExecutionEvent.model_validate({"user_id": self.user_id, **body})
        return autogpt_frame(Methods.NODE_EXECUTION_EVENT, self.execution_channel, event)

    def graph_frame(self, body: dict[str, Any], channel: str) -> str:
        event = GraphExecutionEvent.model_validate(body)
        return autogpt_frame(Methods.GRAPH_EXECUTION_EVENT, channel, event)


async def publish(server: DaphneServer, *bodies: dict[str, Any]) -> None:
    assert await post_executions(server, list(bodies)) == (202, {"accepted": len(bodies)})


async def opened(server: DaphneServer, token: str) -> ClientConnection:
    return await connect(server.ws_url, additional_headers={"Authorization": f"Bearer {token}"})


async def request(client: ClientConnection, method: str, data: Any) -> str:
    await client.send(json.dumps({"method": method, "data": data}))
    async with asyncio.timeout(TIMEOUT):
        return str(await client.recv())


async def frames(client: ClientConnection, count: int) -> list[str]:
    async with asyncio.timeout(TIMEOUT):
        return [str(await client.recv()) for _ in range(count)]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT)) as client:
        yield client


async def test_each_new_method_end_to_end(site: Site, alice_id: str, server: DaphneServer) -> None:
    run = Run(site, alice_id)
    await publish(server, run.node(status="QUEUED"))
    client = await opened(server, site.token_for("alice"))
    try:
        execution_ack = await request(
            client, "subscribe_graph_execution", {"graph_exec_id": run.exec_id}
        )
        executions_ack = await request(
            client, "subscribe_graph_executions", {"graph_id": run.graph_id}
        )
        node, result, finished = run.node(), run.result(node_id="node-7"), run.finished()
        await publish(server, node, result, finished)
        received = await frames(client, 4)
        pong = await request(client, "heartbeat", "ping")
        unsubscribed = await request(client, "unsubscribe", {"graph_exec_id": run.exec_id})
    finally:
        await client.close()

    assert execution_ack == (
        '{"method":"subscribe_graph_execution","data":null,"success":true,'
        f'"channel":"{run.execution_channel}","error":null}}'
    )
    assert executions_ack == (
        '{"method":"subscribe_graph_executions","data":null,"success":true,'
        f'"channel":"{run.executions_channel}","error":null}}'
    )
    assert received == [
        run.node_frame(node),
        run.node_frame(result),
        # One graph event, two subscriptions: a frame on each channel, in subscription order.
        run.graph_frame(finished, run.execution_channel),
        run.graph_frame(finished, run.executions_channel),
    ]
    assert pong == '{"method":"heartbeat","data":"pong","success":true,"channel":null,"error":null}'
    assert unsubscribed == (
        '{"method":"unsubscribe","data":null,"success":true,'
        f'"channel":"{run.execution_channel}","error":null}}'
    )


async def test_one_execution_over_sse_end_to_end(
    site: Site, alice_id: str, server: DaphneServer, http: httpx.AsyncClient
) -> None:
    run = Run(site, alice_id)
    first = run.node(status="QUEUED")
    await publish(server, first)
    url = f"{server.http_url}/api/executions/{run.exec_id}/events?since=0"
    headers = {"Authorization": f"Bearer {site.token_for('alice')}"}
    node, finished = run.node(), run.finished()

    async with aconnect_sse(http, "GET", url, headers=headers) as source:
        events = source.aiter_sse()
        await publish(server, node, finished)
        async with asyncio.timeout(TIMEOUT):
            received = [await anext(events) for _ in range(3)]

    assert [(event.event, event.data, event.id) for event in received] == [
        ("node_execution_event", run.node_frame(first), "1"),
        ("node_execution_event", run.node_frame(node), "2"),
        ("graph_execution_event", run.graph_frame(finished, run.execution_channel), "3"),
    ]


async def test_events_published_on_one_process_reach_the_others_subscribers_over_redis(
    site: Site, alice_id: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    run = Run(site, alice_id)
    token = site.token_for("alice")
    with redis_server_pairs(site, tmp_path, prefix="autogpt-") as pair:
        first, second = pair("pubsub")
        await publish(first, run.node(status="QUEUED"))
        client = await opened(second, token)
        try:
            await request(client, "subscribe_graph_execution", {"graph_exec_id": run.exec_id})
            await request(client, "subscribe_graph_executions", {"graph_id": run.graph_id})
            url = f"{second.http_url}/api/executions/{run.exec_id}/events"
            headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": "1"}
            async with aconnect_sse(http, "GET", url, headers=headers) as source:
                events = source.aiter_sse()
                node, finished = run.node(), run.finished()
                await publish(first, node, finished)
                received = await frames(client, 3)
                async with asyncio.timeout(TIMEOUT):
                    streamed = [await anext(events) for _ in range(2)]
        finally:
            await client.close()

    assert received == [
        run.node_frame(node),
        run.graph_frame(finished, run.execution_channel),
        run.graph_frame(finished, run.executions_channel),
    ]
    assert [(event.event, event.data, event.id) for event in streamed] == [
        ("node_execution_event", run.node_frame(node), "2"),
        ("graph_execution_event", run.graph_frame(finished, run.execution_channel), "3"),
    ]


# The backlog a stalled client may hold before it is closed, and enough events to pass it and
# the kernel's socket buffers on localhost many times over.
STALLED_BACKLOG_BYTES = 256 * 1024
STALLED_EVENTS = 1_500
STALLED_OUTPUT_BYTES = 8 * 1024
STALLED_TIMEOUT = 60.0


async def test_a_stalled_execution_subscriber_is_closed_with_4008_and_got_its_events_in_order(
    site: Site, alice_id: str, tmp_path: Path
) -> None:
    run = Run(site, alice_id)
    env = settings_env(
        site, tmp_path, "stalled_settings", EXECUTIONS_MAX_BACKLOG_BYTES=STALLED_BACKLOG_BYTES
    )
    bodies = [
        run.node(node_exec_id=f"n-{index}", output_data={"blob": ["x" * STALLED_OUTPUT_BYTES]})
        for index in range(STALLED_EVENTS)
    ]
    with DaphneServer(env, tmp_path, "stalled") as server:
        await publish(server, run.node(status="QUEUED"))
        stalled = await connect(
            server.ws_url,
            additional_headers={"Authorization": f"Bearer {site.token_for('alice')}"},
            max_queue=1,
            ping_interval=None,
        )
        await request(stalled, "subscribe_graph_execution", {"graph_exec_id": run.exec_id})
        async with asyncio.timeout(STALLED_TIMEOUT):
            for start in range(0, STALLED_EVENTS, 100):
                await publish(server, *bodies[start : start + 100])
                if (await metrics(server)).get(SLOW_DISCONNECTS, 0) >= 1:
                    break
            while (await metrics(server)).get(SLOW_DISCONNECTS, 0) < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            received: list[str] = []
            with contextlib.suppress(ConnectionClosed):
                while True:
                    received.append(str(await stalled.recv()))
        server.assert_running()

    assert stalled.close_code == 4008
    *events, error = received
    assert json.loads(error)["error"].startswith("Too slow: the client fell behind the stream.")
    node_exec_ids = [json.loads(frame)["data"]["node_exec_id"] for frame in events]
    assert node_exec_ids == [f"n-{index}" for index in range(len(node_exec_ids))]
    assert 0 < len(node_exec_ids) < STALLED_EVENTS


async def test_the_subscription_limit_counts_both_protocols_on_a_connection(
    site: Site, alice_id: str, tmp_path: Path
) -> None:
    run = Run(site, alice_id)
    env = settings_env(
        site, tmp_path, "limited_settings", EXECUTIONS_MAX_SUBSCRIPTIONS_PER_CONNECTION=2
    )
    with DaphneServer(env, tmp_path, "limited") as server:
        await publish(server, run.node())
        client = await opened(server, site.token_for("alice"))
        try:
            await request(client, "subscribe", {"graph_id": run.graph_id})
            await request(client, "subscribe_graph_execution", {"graph_exec_id": run.exec_id})
            refused = await request(
                client, "subscribe_graph_executions", {"graph_id": run.graph_id}
            )
        finally:
            await client.close()

    assert json.loads(refused) == {
        "method": "error",
        "data": None,
        "success": False,
        "channel": run.executions_channel,
        "error": "Too many subscriptions: at most 2 per connection; unsubscribe from one first.",
    }
