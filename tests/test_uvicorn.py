"""The same application under uvicorn: the protocol, publishing, limits and restarts hold."""

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from executions.schemas import ExecutionResult, execution_event_frame
from tests.conftest import make_result
from tests.servers import Site, UvicornServer, post_executions, prepare_site
from tests.support import close_frame

GRAPH = f"uvicorn-{uuid.uuid4().hex[:10]}"
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    prepared = prepare_site(tmp_path_factory.mktemp("uvicorn-site"))
    prepared.token_for("alice")
    prepared.register_graph(GRAPH, "alice")
    return prepared


@pytest.fixture
def server(site: Site, tmp_path: Path) -> Iterator[UvicornServer]:
    with UvicornServer(site.env, tmp_path, name="uvicorn") as running:
        yield running


async def test_a_subscriber_receives_published_results_byte_for_byte(
    site: Site, server: UvicornServer
) -> None:
    token = site.token_for("alice")
    result = make_result(graph_id=GRAPH, node_exec_id="under-uvicorn")
    async with connect(f"{server.ws_url}?token={token}") as client:
        await client.send(json.dumps({"method": "subscribe", "data": {"graph_id": GRAPH}}))
        async with asyncio.timeout(TIMEOUT):
            assert json.loads(await client.recv())["success"] is True

        status, answer = await post_executions(server, [json.loads(result.model_dump_json())])

        assert (status, answer) == (202, {"accepted": 1})
        async with asyncio.timeout(TIMEOUT):
            frame = await client.recv()
        assert frame == execution_event_frame(ExecutionResult.model_validate(result))


async def test_batches_reach_every_subscriber_whole_and_in_order(
    site: Site, server: UvicornServer
) -> None:
    # Each batch is handed out 64 events at a time, each subscriber's frames in one write.
    token = site.token_for("alice")
    results = [make_result(graph_id=GRAPH, node_exec_id=f"batch-{n}") for n in range(600)]
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(connect(f"{server.ws_url}?token={token}"))
            for _ in range(3)
        ]
        for client in clients:
            await client.send(json.dumps({"method": "subscribe", "data": {"graph_id": GRAPH}}))
            async with asyncio.timeout(TIMEOUT):
                assert json.loads(await client.recv())["success"] is True

        for start in range(0, len(results), 200):
            body = [json.loads(result.model_dump_json()) for result in results[start : start + 200]]
            assert await post_executions(server, body) == (202, {"accepted": 200})

        async with asyncio.timeout(TIMEOUT * 2):
            received = [[await client.recv() for _ in results] for client in clients]
    expected = [execution_event_frame(result) for result in results]
    assert all(frames == expected for frames in received)


async def test_a_missing_token_is_closed_with_4001(server: UvicornServer) -> None:
    async with connect(server.ws_url) as client:
        received = await close_frame(client)
    assert received.code == 4001
    assert received.reason == "Missing authentication token"


async def test_an_oversized_message_is_refused_from_its_header_with_1009(
    site: Site, server: UvicornServer
) -> None:
    # The uvicorn adapter gives the app's limit to uvicorn's parser, as daphne's adapter does.
    token = site.token_for("alice")
    async with connect(f"{server.ws_url}?token={token}") as client:
        await client.send(json.dumps({"method": "heartbeat", "data": "x" * 70_000}))
        received = await close_frame(client)
    assert received.code == 1009


async def test_sigterm_tells_clients_to_reconnect_with_1012(
    site: Site, server: UvicornServer
) -> None:
    token = site.token_for("alice")
    async with connect(f"{server.ws_url}?token={token}") as client:
        await client.send(json.dumps({"method": "subscribe", "data": {"graph_id": GRAPH}}))
        async with asyncio.timeout(TIMEOUT):
            await client.recv()
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        received = await close_frame(client)
    assert received.code == 1012
    # uvicorn exits by re-raising the signal once it has shut down gracefully.
    assert server.process.wait(timeout=TIMEOUT) in (0, -signal.SIGTERM)
