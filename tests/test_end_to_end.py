"""End to end: daphne subprocesses, the `websockets` client, HTTP ingest, real Redis.

Nothing is mocked and nothing runs in this process but the clients: the servers and the
management commands are subprocesses sharing a SQLite file of their own, so these tests never
touch pytest-django's test database (no ``django_db`` mark, and database access from this
process stays blocked). Graph ids carry a per-run id, so concurrent runs sharing Redis never
see each other's events.
"""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from executions.schemas import ExecutionResult, execution_event_frame
from tests.servers import (
    DaphneServer,
    ServerPair,
    Site,
    post_executions,
    prepare_site,
    redis_server_pairs,
    run_manage,
)
from tests.support import redis_url_or_skip

RUN = uuid.uuid4().hex[:12]
ALICE_GRAPH = f"e2e-{RUN}-alice"
BURST_GRAPH = f"e2e-{RUN}-burst"
BOB_GRAPH = f"e2e-{RUN}-bob"

MESSAGE_LIMIT = 64 * 1024
RECEIVE_TIMEOUT = 5.0
SILENCE = 0.5
HEARTBEAT_REPLY = '{"method":"heartbeat","data":"pong","success":true,"channel":null,"error":null}'


# --- the site: users, graphs and tokens, made by the real management commands -------------


@dataclass(frozen=True)
class People:
    """Alice owns ALICE_GRAPH and BURST_GRAPH, Bob owns BOB_GRAPH."""

    site: Site
    alice_token: str
    bob_token: str
    short_lived_token: str  # Alice's, minted with --ttl 1
    short_lived_expired_by: float  # time.time() after which it has certainly expired


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> People:
    site = prepare_site(tmp_path_factory.mktemp("e2e-site"))
    alice_token = site.token_for("alice")
    bob_token = site.token_for("bob")
    site.register_graph(ALICE_GRAPH, owner="alice")
    site.register_graph(BURST_GRAPH, owner="alice")
    site.register_graph(BOB_GRAPH, owner="bob")
    short_lived_token = site.token_for("alice", ttl=1, create_user=False)
    # ws_token computes int(now) + 1; one second after it returned, that moment has passed.
    expired_by = time.time() + 1.2
    return People(site, alice_token, bob_token, short_lived_token, expired_by)


@pytest.fixture(scope="module")
def server(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneServer]:
    """One daphne process on the in-memory channel layer."""
    with DaphneServer(people.site.env, tmp_path_factory.mktemp("logs"), "memory") as daphne:
        yield daphne


@pytest.fixture(scope="module")
def redis_servers(
    people: People, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], ServerPair]]:
    """Two daphne processes on one SQLite file and one Redis layer, started on demand."""
    log_dir = tmp_path_factory.mktemp("redis-logs")
    with redis_server_pairs(people.site, log_dir, "") as pair:
        yield pair


# --- clients and events -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def ws_client(
    server: DaphneServer, token: str | None = None, origin: str | None = None
) -> AsyncIterator[ClientConnection]:
    """A `websockets` connection to the server's /ws, sending no Origin unless given one."""
    url = server.ws_url if token is None else f"{server.ws_url}?token={token}"
    async with connect(
        url,
        origin=Origin(origin) if origin is not None else None,
        open_timeout=RECEIVE_TIMEOUT,
        close_timeout=2,
    ) as connection:
        yield connection


async def receive(connection: ClientConnection, seconds: float = RECEIVE_TIMEOUT) -> str:
    message = await asyncio.wait_for(connection.recv(), seconds)
    assert isinstance(message, str), f"expected a text frame, got {message!r}"
    return message


async def receive_bytes(connection: ClientConnection, seconds: float = RECEIVE_TIMEOUT) -> bytes:
    """The next text frame's UTF-8 payload exactly as it came off the wire."""
    message = await asyncio.wait_for(connection.recv(decode=False), seconds)
    assert isinstance(message, bytes)
    return message


async def subscribe(connection: ClientConnection, graph_id: str) -> str:
    await connection.send(json.dumps({"method": "subscribe", "data": {"graph_id": graph_id}}))
    return await receive(connection)


async def subscribed(connection: ClientConnection, graph_id: str) -> None:
    assert await subscribe(connection, graph_id) == subscribe_ack(graph_id)


async def assert_heartbeat_answered(connection: ClientConnection) -> None:
    await connection.send('{"method":"heartbeat","data":"ping"}')
    assert await receive(connection) == HEARTBEAT_REPLY


async def assert_silent(connection: ClientConnection, seconds: float = SILENCE) -> None:
    try:
        message = await asyncio.wait_for(connection.recv(), seconds)
    except TimeoutError:
        return
    pytest.fail(f"expected no message within {seconds} s, received {message!r}")


async def close_after_frames(connection: ClientConnection) -> tuple[list[str], int]:
    """Read until the server closes; return the frames before the close, and its close code.

    (daphne 4.2 sends no close reason, so there is none to check.)
    """
    frames: list[str] = []
    closed: ConnectionClosed | None = None
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        while closed is None:
            try:
                frames.append(await receive(connection))
            except ConnectionClosed as exc:
                closed = exc
    assert closed.rcvd is not None, f"the server sent no close frame: {closed!r}"
    return frames, closed.rcvd.code


def subscribe_ack(graph_id: str) -> str:
    return (
        f'{{"method":"subscribe","data":null,"success":true,"channel":"{graph_id}","error":null}}'
    )


def error_frame(error: str, channel: str | None = None) -> str:
    channel_json = json.dumps(channel)
    return (
        f'{{"method":"error","data":null,"success":false,"channel":{channel_json},'
        f'"error":"{error}"}}'
    )


def execution(graph_id: str, index: int = 0) -> dict[str, Any]:
    """One ExecutionResult as an executor would POST it, with non-ASCII text and time zones."""
    return {
        "graph_id": graph_id,
        "graph_version": 3,
        "graph_exec_id": f"graph-exec-{RUN}",
        "node_exec_id": f"node-exec-{index:04d}",
        "node_id": "node-7",
        "block_id": "block-ai-text",
        "status": "COMPLETED",
        "input_data": {"prompt": "Grüße, «quoted» ✓ 🚀", "n": index},
        "output_data": {"response": [f"answer {index}", {"tokens": 12}], "empty": []},
        "add_time": "2025-01-02T03:04:05.123456Z",
        "queue_time": "2025-01-02T05:04:06+02:00",
        "start_time": "2025-01-02T03:04:07Z",
        "end_time": None,
    }


def expected_frame(body: dict[str, Any]) -> str:
    return execution_event_frame(ExecutionResult.model_validate(body))


# --- subscribing and receiving, on one server ---------------------------------------------


async def test_token_client_without_origin_subscribes_to_its_own_graph(
    server: DaphneServer, people: People
) -> None:
    async with ws_client(server, people.alice_token) as alice:
        assert await subscribe(alice, ALICE_GRAPH) == (
            f'{{"method":"subscribe","data":null,"success":true,"channel":"{ALICE_GRAPH}",'
            f'"error":null}}'
        )


async def test_posted_result_reaches_subscriber_byte_for_byte(
    server: DaphneServer, people: People
) -> None:
    """POST /api/executions answers 202 and the subscriber gets the server-built frame as is."""
    body = execution(ALICE_GRAPH)
    async with ws_client(server, people.alice_token) as alice:
        await subscribed(alice, ALICE_GRAPH)

        assert await post_executions(server, body) == (202, {"accepted": 1})

        assert await receive_bytes(alice) == expected_frame(body).encode("utf-8")


async def test_posted_batch_arrives_in_order(server: DaphneServer, people: People) -> None:
    batch = [execution(ALICE_GRAPH, index) for index in range(3)]
    async with ws_client(server, people.alice_token) as alice:
        await subscribed(alice, ALICE_GRAPH)

        assert await post_executions(server, batch) == (202, {"accepted": 3})

        assert [await receive(alice) for _ in batch] == [expected_frame(b) for b in batch]


async def test_subscriber_of_another_graph_receives_nothing(
    server: DaphneServer, people: People
) -> None:
    async with (
        ws_client(server, people.alice_token) as alice,
        ws_client(server, people.bob_token) as bob,
    ):
        await subscribed(alice, ALICE_GRAPH)
        await subscribed(bob, BOB_GRAPH)

        assert await post_executions(server, execution(ALICE_GRAPH)) == (202, {"accepted": 1})

        await receive(alice)
        await assert_silent(bob)
        await assert_heartbeat_answered(bob)


async def test_ingest_with_a_wrong_bearer_token_is_refused(server: DaphneServer) -> None:
    status, body = await post_executions(server, execution(ALICE_GRAPH), bearer="not-the-token")

    assert (status, body) == (401, {"error": "Missing or invalid credentials."})


# --- authentication and origin checks ------------------------------------------------------


async def test_connection_without_token_gets_error_frame_then_close_4001(
    server: DaphneServer,
) -> None:
    async with ws_client(server) as anonymous:
        frames, code = await close_after_frames(anonymous)

    assert frames == [error_frame("Missing authentication token")]
    assert code == 4001


async def test_invalid_token_closes_with_4001(server: DaphneServer, people: People) -> None:
    token = people.alice_token
    forged = token[:-1] + ("B" if token.endswith("A") else "A")  # its signature no longer matches
    async with ws_client(server, forged) as client:
        frames, code = await close_after_frames(client)

    assert frames == [error_frame("Invalid token")]
    assert code == 4001


async def test_expired_token_closes_with_4001(server: DaphneServer, people: People) -> None:
    await asyncio.sleep(max(0.0, people.short_lived_expired_by - time.time()))
    async with ws_client(server, people.short_lived_token) as client:
        frames, code = await close_after_frames(client)

    assert frames == [error_frame("Token expired")]
    assert code == 4001


async def test_cross_site_origin_is_refused_at_handshake(
    server: DaphneServer, people: People
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_client(server, people.alice_token, origin="http://evil.example"):
            pytest.fail("the handshake from another site's origin was accepted")

    assert refused.value.response.status_code == 403


async def test_same_site_origin_with_valid_token_is_accepted(
    server: DaphneServer, people: People
) -> None:
    # The page's own origin: the host and port the client connects to (server.ws_url).
    origin = f"http://127.0.0.1:{server.port}"
    async with ws_client(server, people.alice_token, origin=origin) as alice:
        await subscribed(alice, ALICE_GRAPH)
        await assert_heartbeat_answered(alice)


async def test_subscribing_to_another_users_graph_is_refused_and_connection_stays_open(
    server: DaphneServer, people: People
) -> None:
    async with ws_client(server, people.alice_token) as alice:
        assert await subscribe(alice, BOB_GRAPH) == (
            f'{{"method":"error","data":null,"success":false,"channel":"{BOB_GRAPH}",'
            f'"error":"Not allowed to subscribe to this graph."}}'
        )
        await assert_heartbeat_answered(alice)

        assert await post_executions(server, execution(BOB_GRAPH)) == (202, {"accepted": 1})
        await assert_silent(alice)


# --- message size --------------------------------------------------------------------------


def heartbeat_of_size(size: int) -> str:
    """A heartbeat message exactly `size` bytes long (ASCII, so as many characters)."""
    envelope = '{"method":"heartbeat","data":""}'
    return envelope[:-2] + "x" * (size - len(envelope)) + envelope[-2:]


async def test_message_of_exactly_64_kib_is_processed(server: DaphneServer, people: People) -> None:
    async with ws_client(server, people.alice_token) as alice:
        await alice.send(heartbeat_of_size(MESSAGE_LIMIT))

        assert await receive(alice) == HEARTBEAT_REPLY


async def test_message_over_64_kib_closes_with_1009(server: DaphneServer, people: People) -> None:
    """daphne itself refuses the frame from its header, before buffering it: 1009."""
    async with ws_client(server, people.alice_token) as alice:
        await alice.send(heartbeat_of_size(MESSAGE_LIMIT + 1))
        frames, code = await close_after_frames(alice)

    assert frames == []
    assert code == 1009


async def test_the_server_survives_an_oversized_message(
    server: DaphneServer, people: People
) -> None:
    async with ws_client(server, people.alice_token) as alice:
        await alice.send(heartbeat_of_size(10 * MESSAGE_LIMIT))
        await close_after_frames(alice)
    async with ws_client(server, people.alice_token) as alice:
        await alice.send('{"method":"heartbeat","data":"ping"}')
        assert await receive(alice) == HEARTBEAT_REPLY


# --- Redis: several processes -------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_result_published_by_a_third_process_reaches_clients_on_both_servers(
    redis_servers: Callable[[str], ServerPair], people: People, layer: str
) -> None:
    server_a, server_b = redis_servers(layer)
    body = execution(ALICE_GRAPH, index=7)
    async with (
        ws_client(server_a, people.alice_token) as on_a,
        ws_client(server_b, people.alice_token) as on_b,
    ):
        await subscribed(on_a, ALICE_GRAPH)
        await subscribed(on_b, ALICE_GRAPH)

        published = await asyncio.to_thread(
            run_manage,
            people.site.with_redis(redis_url_or_skip(), layer),
            "publish_execution",
            stdin=json.dumps(body),
        )

        assert published.stdout.strip() == "Published 1 execution result(s)."
        frame = expected_frame(body).encode("utf-8")
        assert await receive_bytes(on_a) == frame
        assert await receive_bytes(on_b) == frame


def test_publish_execution_without_redis_refuses_to_publish(people: People) -> None:
    """On the in-memory layer the command could reach nobody, so it says so and fails."""
    refused = people.site.manage(
        "publish_execution", stdin=json.dumps(execution(ALICE_GRAPH)), check=False
    )

    assert refused.returncode != 0
    assert "Not published" in refused.stderr
    assert "REDIS_URL" in refused.stderr


# --- bursts --------------------------------------------------------------------------------

BURST_CLIENTS = 3
BURST_BATCHES = 10
BURST_BATCH_SIZE = 100
BURST_TIMEOUT = 30.0


async def collect(connection: ClientConnection, count: int) -> list[str]:
    frames: list[str] = []
    async with asyncio.timeout(BURST_TIMEOUT):
        while len(frames) < count:
            frames.append(await receive(connection, seconds=BURST_TIMEOUT))
    return frames


@pytest.mark.parametrize("layer", ["memory", pytest.param("pubsub", marks=pytest.mark.redis)])
async def test_burst_of_1000_results_reaches_every_client_in_order(
    server: DaphneServer,
    redis_servers: Callable[[str], ServerPair],
    people: People,
    layer: str,
) -> None:
    """Clients on one process; on Redis, the batches are POSTed to the other process."""
    if layer == "memory":
        subscriber_server = ingest_server = server
    else:
        subscriber_server, ingest_server = redis_servers(layer)
    bodies = [execution(BURST_GRAPH, index) for index in range(BURST_BATCHES * BURST_BATCH_SIZE)]

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(ws_client(subscriber_server, people.alice_token))
            for _ in range(BURST_CLIENTS)
        ]
        for client in clients:
            await subscribed(client, BURST_GRAPH)
        collectors = [asyncio.create_task(collect(client, len(bodies))) for client in clients]

        for start in range(0, len(bodies), BURST_BATCH_SIZE):
            batch = bodies[start : start + BURST_BATCH_SIZE]
            assert await post_executions(ingest_server, batch) == (202, {"accepted": len(batch)})
        received = await asyncio.gather(*collectors)

    expected_ids = [body["node_exec_id"] for body in bodies]
    expected_frames = [expected_frame(body) for body in bodies]
    for frames in received:
        assert [json.loads(f)["data"]["node_exec_id"] for f in frames] == expected_ids
        assert frames == expected_frames
