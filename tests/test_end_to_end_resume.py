"""End to end: resuming with since, and the history endpoint, on real daphne processes.

The servers and the management commands are subprocesses sharing a SQLite file of their own;
this process only runs `websockets` and HTTP clients. Every graph id is new (a uuid), so runs
sharing a Redis server never see each other's events. Every wait is bounded.
"""

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from executions.schemas import ExecutionResult, execution_event_frame
from tests.servers import (
    DaphneServer,
    ServerPair,
    Site,
    post_executions,
    prepare_site,
    redis_server_pairs,
    request_json,
)

RUN = uuid.uuid4().hex[:12]

RECEIVE_TIMEOUT = 5.0
STREAM_TIMEOUT = 20.0
SILENCE = 0.5
BATCH_SIZE = 100

# The reconnect scenario of the issue: a first batch, the client drops after part of it,
# 500 more are published while it is away, then it resumes and stays for live events.
FIRST_BATCH = 100
RECEIVED_BEFORE_DROP = 60
PUBLISHED_WHILE_AWAY = 500
LIVE_AFTER = 50


# --- the site, the servers and the graphs -------------------------------------------------


@dataclass(frozen=True)
class People:
    """Alice and Bob, each with a WebSocket token; graphs are registered per test."""

    site: Site
    alice_token: str
    bob_token: str


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> People:
    site = prepare_site(tmp_path_factory.mktemp("e2e-resume-site"))
    return People(site, site.token_for("alice"), site.token_for("bob"))


@pytest.fixture
def new_graph(people: People) -> Callable[..., str]:
    """Register a graph never used before, owned by Alice unless told otherwise."""

    def register(owner: str = "alice") -> str:
        graph_id = f"e2e-resume-{RUN}-{uuid.uuid4().hex[:12]}"
        people.site.register_graph(graph_id, owner=owner)
        return graph_id

    return register


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
    with redis_server_pairs(people.site, log_dir, "resume-") as pair:
        yield pair


def servers_for(
    layer: str, server: DaphneServer, redis_servers: Callable[[str], ServerPair]
) -> ServerPair:
    """The same process twice in memory; on Redis, two processes sharing the database."""
    return (server, server) if layer == "memory" else redis_servers(layer)


# --- events and the frames they become ----------------------------------------------------


def execution(graph_id: str, index: int) -> dict[str, Any]:
    """One ExecutionResult as an executor would POST it, with non-ASCII text and time zones."""
    return {
        "graph_id": graph_id,
        "graph_version": 3,
        "graph_exec_id": f"graph-exec-{RUN}",
        "node_exec_id": f"node-exec-{index:05d}",
        "node_id": f"node-{index % 7}",
        "block_id": "block-ai-text",
        "status": "COMPLETED",
        "input_data": {"prompt": "Grüße, «quoted» ✓ 🚀", "n": index},
        "output_data": {"response": [f"answer {index}", {"tokens": 12}], "empty": []},
        "add_time": "2025-01-02T03:04:05.123456Z",
        "queue_time": "2025-01-02T05:04:06+02:00",
        "start_time": "2025-01-02T03:04:07Z",
        "end_time": None,
    }


def executions(graph_id: str, first: int, count: int) -> list[dict[str, Any]]:
    return [execution(graph_id, index) for index in range(first, first + count)]


def numbered_frame(body: dict[str, Any], seq: int) -> bytes:
    """The exact bytes a resuming client receives: the live frame with "seq" as last key."""
    frame = execution_event_frame(ExecutionResult.model_validate(body))
    return (frame[:-1] + f',"seq":{seq}}}').encode("utf-8")


def resume_reply(graph_id: str, head: int, oldest: int = 1, truncated: bool = False) -> str:
    data = json.dumps({"head": head, "oldest": oldest, "truncated": truncated}).replace(" ", "")
    return (
        f'{{"method":"subscribe","data":{data},"success":true,"channel":"{graph_id}","error":null}}'
    )


async def publish(server: DaphneServer, bodies: Sequence[dict[str, Any]]) -> None:
    """POST the bodies to the server's ingest endpoint, in batches, one after another."""
    for start in range(0, len(bodies), BATCH_SIZE):
        batch = list(bodies[start : start + BATCH_SIZE])
        assert await post_executions(server, batch) == (202, {"accepted": len(batch)})


# --- clients ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def ws_client(server: DaphneServer, token: str) -> AsyncIterator[ClientConnection]:
    async with connect(
        f"{server.ws_url}?token={token}", open_timeout=RECEIVE_TIMEOUT, close_timeout=2
    ) as connection:
        yield connection


async def drop(connection: ClientConnection) -> None:
    """Cut the TCP connection with no close handshake, as a network failure would."""
    connection.transport.abort()
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        await connection.wait_closed()


async def resume(connection: ClientConnection, graph_id: str, since: int) -> str:
    """Subscribe with since; return the server's reply."""
    message = {"method": "subscribe", "data": {"graph_id": graph_id, "since": since}}
    await connection.send(json.dumps(message))
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        reply = await connection.recv()
    assert isinstance(reply, str)
    return reply


async def receive_frames(connection: ClientConnection, count: int) -> list[bytes]:
    """The next `count` text frames, as the bytes that came off the wire."""
    frames: list[bytes] = []
    async with asyncio.timeout(STREAM_TIMEOUT):
        while len(frames) < count:
            frames.append(await connection.recv(decode=False))
    return frames


async def receive_until_silent(connection: ClientConnection) -> list[bytes]:
    """Whatever else arrives until the connection stays silent for SILENCE seconds."""
    frames: list[bytes] = []
    async with asyncio.timeout(STREAM_TIMEOUT):
        while True:
            try:
                async with asyncio.timeout(SILENCE):
                    frames.append(await connection.recv(decode=False))
            except TimeoutError:
                return frames


def seq_of(frame: bytes) -> int:
    """The frame's sequence number, which must be its envelope's last key."""
    envelope = json.loads(frame)
    assert list(envelope)[-1] == "seq", f"seq is not the last key of {frame!r}"
    seq: int = envelope["seq"]
    return seq


def node_exec_ids(frames: Sequence[bytes]) -> list[str]:
    return [json.loads(frame)["data"]["node_exec_id"] for frame in frames]


@dataclass(frozen=True)
class ResumeFigures:
    """What a client that resumed got, counted from the sequence numbers it received."""

    missed: int  # events numbered after the last one received before the drop, up to the head
    replayed: int  # frames received after resuming numbered up to that head
    duplicates: int  # frames whose number the client had already received
    out_of_order: int  # frames numbered no higher than the frame before them
    gaps: int  # missed numbers never received
    live_after: int  # frames received after resuming numbered past that head

    @classmethod
    def count(cls, before: Sequence[int], after: Sequence[int], head: int) -> "ResumeFigures":
        last = before[-1] if before else 0
        seen: set[int] = set(before)
        duplicates = 0
        for seq in after:
            duplicates += seq in seen
            seen.add(seq)
        return cls(
            missed=head - last,
            replayed=sum(1 for seq in after if seq <= head),
            duplicates=duplicates,
            out_of_order=sum(1 for a, b in itertools.pairwise(after) if b <= a),
            gaps=len(set(range(last + 1, head + 1)) - set(after)),
            live_after=sum(1 for seq in after if seq > head),
        )

    def line(self, label: str, **context: int) -> str:
        """One line for the log: the context given, then the figures."""
        figures = {**context, **asdict(self)}
        return f"resume figures [{label}]: " + " ".join(f"{k}={v}" for k, v in figures.items())


# --- reconnecting with since --------------------------------------------------------------


async def reconnect_with_since(
    people: People,
    graph_id: str,
    first: DaphneServer,
    second: DaphneServer,
    ingest_while_away: DaphneServer,
    ingest_live: DaphneServer,
    label: str,
) -> None:
    """The issue's scenario: drop mid-stream, 500 published meanwhile, resume, then live."""
    bodies = executions(graph_id, 0, FIRST_BATCH + PUBLISHED_WHILE_AWAY + LIVE_AFTER)
    expected = [numbered_frame(body, seq) for seq, body in enumerate(bodies, start=1)]

    async with ws_client(first, people.alice_token) as client:
        assert await resume(client, graph_id, since=0) == resume_reply(graph_id, head=0)
        await publish(ingest_while_away, bodies[:FIRST_BATCH])
        before = await receive_frames(client, RECEIVED_BEFORE_DROP)
        await drop(client)
    assert before == expected[:RECEIVED_BEFORE_DROP]
    last_seq = seq_of(before[-1])

    head = FIRST_BATCH + PUBLISHED_WHILE_AWAY
    await publish(ingest_while_away, bodies[FIRST_BATCH:head])

    async with ws_client(second, people.alice_token) as client:
        assert await resume(client, graph_id, since=last_seq) == resume_reply(graph_id, head)
        replayed = await receive_frames(client, head - last_seq)
        await publish(ingest_live, bodies[head:])
        live = await receive_frames(client, LIVE_AFTER)
        extra = await receive_until_silent(client)
    after = replayed + live + extra

    figures = ResumeFigures.count(
        [seq_of(frame) for frame in before], [seq_of(frame) for frame in after], head
    )
    print(
        figures.line(
            label, received_before_drop=len(before), published_while_away=PUBLISHED_WHILE_AWAY
        )
    )
    assert figures == ResumeFigures(
        missed=head - RECEIVED_BEFORE_DROP,
        replayed=head - RECEIVED_BEFORE_DROP,
        duplicates=0,
        out_of_order=0,
        gaps=0,
        live_after=LIVE_AFTER,
    )
    assert node_exec_ids(after) == [body["node_exec_id"] for body in bodies[last_seq:]]
    assert after == expected[last_seq:]


async def test_a_client_that_reconnects_with_since_gets_exactly_what_it_missed(
    server: DaphneServer, people: People, new_graph: Callable[..., str]
) -> None:
    """Dropped mid-stream, it resumes with the missed events in order, then live ones."""
    await reconnect_with_since(
        people, new_graph(), server, server, server, server, label="memory, one process"
    )


@pytest.mark.redis
@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_a_client_that_reconnects_to_another_process_gets_exactly_what_it_missed(
    redis_servers: Callable[[str], ServerPair],
    people: People,
    new_graph: Callable[..., str],
    layer: str,
) -> None:
    """Dropped on process A, it resumes on process B; published through B, then through A."""
    server_a, server_b = redis_servers(layer)
    await reconnect_with_since(
        people,
        new_graph(),
        first=server_a,
        second=server_b,
        ingest_while_away=server_b,
        ingest_live=server_a,
        label=f"redis {layer}, two processes",
    )


# --- resuming while events are being published --------------------------------------------

RACE_PUBLISHED_BEFORE = 200
RACE_RECEIVED_BEFORE_DROP = 150
RACE_BATCHES = 40
RACE_BATCH_SIZE = 15
RACE_RESUME_AFTER_BATCHES = 3


@pytest.mark.parametrize("layer", ["memory", pytest.param("pubsub", marks=pytest.mark.redis)])
async def test_resume_while_publishing_concurrently(
    server: DaphneServer,
    redis_servers: Callable[[str], ServerPair],
    people: People,
    new_graph: Callable[..., str],
    layer: str,
) -> None:
    """Resuming while another task keeps publishing: no gap, no duplicate, in order, to the end."""
    subscriber_server, ingest_server = servers_for(layer, server, redis_servers)
    graph_id = new_graph()
    total = RACE_PUBLISHED_BEFORE + RACE_BATCHES * RACE_BATCH_SIZE
    bodies = executions(graph_id, 0, total)
    expected = [numbered_frame(body, seq) for seq, body in enumerate(bodies, start=1)]

    async with ws_client(subscriber_server, people.alice_token) as client:
        await resume(client, graph_id, since=0)
        await publish(ingest_server, bodies[:RACE_PUBLISHED_BEFORE])
        before = await receive_frames(client, RACE_RECEIVED_BEFORE_DROP)
        await drop(client)
    assert before == expected[:RACE_RECEIVED_BEFORE_DROP]

    publishing_well_under_way = asyncio.Event()

    async def keep_publishing() -> None:
        for batch in range(RACE_BATCHES):
            start = RACE_PUBLISHED_BEFORE + batch * RACE_BATCH_SIZE
            await publish(ingest_server, bodies[start : start + RACE_BATCH_SIZE])
            if batch + 1 == RACE_RESUME_AFTER_BATCHES:
                publishing_well_under_way.set()

    async with asyncio.timeout(STREAM_TIMEOUT):
        publisher = asyncio.create_task(keep_publishing())
        try:
            await publishing_well_under_way.wait()
            async with ws_client(subscriber_server, people.alice_token) as client:
                reply = json.loads(await resume(client, graph_id, since=RACE_RECEIVED_BEFORE_DROP))
                head_at_resume = reply["data"]["head"]
                after = await receive_frames(client, total - RACE_RECEIVED_BEFORE_DROP)
                await publisher
                after += await receive_until_silent(client)
        finally:
            publisher.cancel()

    assert RACE_PUBLISHED_BEFORE < head_at_resume < total, "the resume did not race publishing"
    figures = ResumeFigures.count(
        [seq_of(frame) for frame in before], [seq_of(frame) for frame in after], head_at_resume
    )
    print(
        figures.line(
            f"{layer}, while publishing",
            received_before_drop=len(before),
            head_at_resume=head_at_resume,
            last_published=total,
        )
    )
    assert figures == ResumeFigures(
        missed=head_at_resume - RACE_RECEIVED_BEFORE_DROP,
        replayed=head_at_resume - RACE_RECEIVED_BEFORE_DROP,
        duplicates=0,
        out_of_order=0,
        gaps=0,
        live_after=total - head_at_resume,
    )
    assert [seq_of(frame) for frame in after] == list(
        range(RACE_RECEIVED_BEFORE_DROP + 1, total + 1)
    )
    assert after == expected[RACE_RECEIVED_BEFORE_DROP:]


# --- history over HTTP --------------------------------------------------------------------

HISTORY_EVENTS = 250
HISTORY_PAGE = 100


async def get_history(
    server: DaphneServer, graph_id: str, since: int, limit: int, bearer: str | None
) -> tuple[int, Any]:
    url = f"{server.http_url}/api/graphs/{graph_id}/executions?since={since}&limit={limit}"
    return await asyncio.to_thread(request_json, url, None, bearer, RECEIVE_TIMEOUT)


async def test_history_endpoint_over_the_real_server(
    server: DaphneServer, people: People, new_graph: Callable[..., str]
) -> None:
    """Pages of since/limit walk the whole history in order; another user's graph is 403."""
    graph_id = new_graph()
    bobs_graph = new_graph(owner="bob")
    bodies = executions(graph_id, 0, HISTORY_EVENTS)
    await publish(server, bodies)
    await publish(server, executions(bobs_graph, 0, 3))

    pages: list[dict[str, Any]] = []
    since = 0
    async with asyncio.timeout(STREAM_TIMEOUT):
        while True:
            status, page = await get_history(
                server, graph_id, since, HISTORY_PAGE, people.alice_token
            )
            assert status == 200, page
            pages.append(page)
            if not page["events"]:
                break
            since = page["next_since"]

    assert [len(page["events"]) for page in pages] == [100, 100, 50, 0]
    assert [page["next_since"] for page in pages] == [100, 200, 250, 250]
    for page in pages:
        assert {key: page[key] for key in ("graph_id", "head", "oldest", "truncated")} == {
            "graph_id": graph_id,
            "head": HISTORY_EVENTS,
            "oldest": 1,
            "truncated": False,
        }
    events = [event for page in pages for event in page["events"]]
    assert [event["seq"] for event in events] == list(range(1, HISTORY_EVENTS + 1))
    assert [event["result"] for event in events] == [
        json.loads(execution_event_frame(ExecutionResult.model_validate(body)))["data"]
        for body in bodies
    ]

    assert await get_history(server, bobs_graph, 0, HISTORY_PAGE, people.alice_token) == (
        403,
        {"error": "Not allowed to read this graph."},
    )
    status, bobs_page = await get_history(server, bobs_graph, 0, HISTORY_PAGE, people.bob_token)
    assert (status, bobs_page["head"], len(bobs_page["events"])) == (200, 3, 3)
    assert await get_history(server, graph_id, 0, HISTORY_PAGE, bearer=None) == (
        401,
        {"error": "Missing or invalid credentials."},
    )
