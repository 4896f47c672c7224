"""Server-Sent Events under real servers, read with a real SSE client (httpx-sse).

daphne and uvicorn on the in-memory layer, and two daphne processes on Redis: an event published
on one reaches an SSE client of the other.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from executions.schemas import ExecutionResult, execution_event_frame
from tests.conftest import make_result
from tests.servers import (
    DaphneServer,
    Site,
    UvicornServer,
    post_executions,
    prepare_site,
    redis_server_pairs,
)

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    prepared = prepare_site(tmp_path_factory.mktemp("sse-site"))
    prepared.token_for("alice")
    prepared.token_for("bob")
    prepared.register_graph("bobs-graph", "bob")
    prepared.env["EXECUTIONS_SSE_HEARTBEAT_SECONDS"] = "0.3"
    return prepared


@pytest.fixture(params=[DaphneServer, UvicornServer], ids=["daphne", "uvicorn"])
def server(site: Site, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DaphneServer]:
    with request.param(site.env, tmp_path, name=request.param.__name__) as running:
        yield running


def new_graph(site: Site) -> str:
    graph_id = f"sse/{uuid.uuid4().hex[:10]}"  # a "/" in the id, as graph ids may hold
    site.register_graph(graph_id, "alice")
    return graph_id


async def publish(server: DaphneServer, *results: ExecutionResult) -> None:
    body = [json.loads(result.model_dump_json()) for result in results]
    assert await post_executions(server, body) == (202, {"accepted": len(results)})


async def read_events(events: AsyncIterator[ServerSentEvent], count: int) -> list[ServerSentEvent]:
    """The next `count` events of a stream (one iterator per stream: it reads the body once)."""
    async with asyncio.timeout(TIMEOUT):
        return [await anext(events) for _ in range(count)]


def expected(result: ExecutionResult, seq: int) -> tuple[str, str, str]:
    return ("execution_event", execution_event_frame(result), str(seq))


def triples(events: list[ServerSentEvent]) -> list[tuple[str, str, str]]:
    return [(event.event, event.data, event.id) for event in events]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT)) as client:
        yield client


async def test_live_events_then_last_event_id_resumes_exactly(
    site: Site, server: DaphneServer, http: httpx.AsyncClient
) -> None:
    token = site.token_for("alice")
    graph_id = new_graph(site)
    url = f"{server.http_url}/api/graphs/{graph_id}/events"
    headers = {"Authorization": f"Bearer {token}"}
    results = [make_result(graph_id=graph_id, node_exec_id=str(n)) for n in range(4)]

    # since=0 on a new graph: each result arrives, whether published before the stream has
    # read its position (replayed) or after (live).
    async with aconnect_sse(http, "GET", f"{url}?since=0", headers=headers) as source:
        events = source.aiter_sse()
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        await publish(server, *results[:2])
        assert triples(await read_events(events, 2)) == [
            expected(results[0], 1),
            expected(results[1], 2),
        ]

    await publish(server, *results[2:])
    async with aconnect_sse(http, "GET", url, headers={**headers, "Last-Event-ID": "1"}) as source:
        events = source.aiter_sse()
        replayed = await read_events(events, 3)
        live = make_result(graph_id=graph_id, node_exec_id="live")
        await publish(server, live)
        after = await read_events(events, 1)

    assert triples(replayed) == [expected(results[n - 1], n) for n in (2, 3, 4)]
    assert triples(after) == [expected(live, 5)]


async def test_another_users_graph_is_a_403_and_heartbeats_keep_an_idle_stream(
    site: Site, server: DaphneServer, http: httpx.AsyncClient
) -> None:
    token = site.token_for("alice")
    headers = {"Authorization": f"Bearer {token}"}
    refused = await http.get(f"{server.http_url}/api/graphs/bobs-graph/events", headers=headers)
    assert (refused.status_code, refused.json()) == (
        403,
        {"error": "Not allowed to read this graph."},
    )

    graph_id = new_graph(site)
    url = f"{server.http_url}/api/graphs/{graph_id}/events"
    received = b""
    async with http.stream("GET", url, headers=headers) as response:
        async with asyncio.timeout(TIMEOUT):
            async for chunk in response.aiter_raw():
                received += chunk
                if received.count(b": heartbeat\n\n") >= 2:
                    break
    assert received == b": connected\n\n: heartbeat\n\n: heartbeat\n\n"


async def test_an_event_published_on_one_server_reaches_an_sse_client_of_the_other(
    site: Site, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    token = site.token_for("alice")
    graph_id = new_graph(site)
    result = make_result(graph_id=graph_id, node_exec_id="across")
    with redis_server_pairs(site, tmp_path, prefix="sse-") as pair:
        first, second = pair("pubsub")
        url = f"{second.http_url}/api/graphs/{graph_id}/events?since=0"
        headers = {"Authorization": f"Bearer {token}"}
        async with aconnect_sse(http, "GET", url, headers=headers) as source:
            events = source.aiter_sse()
            await publish(first, result)
            received = await read_events(events, 1)

    assert triples(received) == [expected(result, 1)]
