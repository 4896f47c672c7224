"""Faults end to end: a stalled client, a Redis restart, a connection storm, SIGTERM.

Real daphne subprocesses (and, for the Redis restart, a redis-server of this test's own on a
free port), the `websockets` client and HTTP ingest; nothing is mocked. The servers share a
SQLite file of the module's own, made by the real management commands. Where a test needs
other limits than the defaults, its daphne runs on a settings module written to a tmp dir
(``from project.settings import *`` plus the override), as bench/bench_settings.py does.
Every wait is bounded and every subprocess is stopped in a finally block.
"""

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from executions.groups import graph_group_name
from executions.layers import channel_layer_config
from tests.servers import (
    REPO_ROOT,
    DaphneServer,
    Site,
    UvicornServer,
    post_executions,
    prepare_site,
    running,
    stop_process,
)
from tests.support import free_port

RUN = uuid.uuid4().hex[:12]
# One graph per server the stalled-client test runs on.
SLOW_GRAPHS = {"daphne": f"faults-{RUN}-slow", "uvicorn": f"faults-{RUN}-slow-uvicorn"}
REDIS_GRAPH = f"faults-{RUN}-redis"
STORM_GRAPH = f"faults-{RUN}-storm"
SHUTDOWN_GRAPH = f"faults-{RUN}-shutdown"
QUIET_GRAPH = f"faults-{RUN}-quiet"

MIB = 1024 * 1024
RECEIVE_TIMEOUT = 5.0
HTTP_TIMEOUT = 10.0

SLOW_CONSUMER_CLOSE = 4008
SLOW_DISCONNECTS = "executions_slow_consumer_disconnects_total"
SERVICE_RESTART_CLOSE = 1012


# --- the site: one user, her graphs, her token ---------------------------------------------


@dataclass(frozen=True)
class Faults:
    site: Site
    token: str  # Alice's; she owns every graph of this module


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Faults:
    site = prepare_site(tmp_path_factory.mktemp("faults-site"))
    token = site.token_for("alice")
    graphs = (*SLOW_GRAPHS.values(), REDIS_GRAPH, STORM_GRAPH, SHUTDOWN_GRAPH, QUIET_GRAPH)
    with ThreadPoolExecutor(len(graphs)) as pool:
        list(pool.map(lambda graph_id: site.register_graph(graph_id, owner="alice"), graphs))
    return Faults(site, token)


def settings_env(site: Site, directory: Path, module: str, **overrides: int) -> dict[str, str]:
    """The site's environment on a settings module of the project's settings plus overrides."""
    lines = ["from project.settings import *  # noqa: F403"]
    lines += [f"{name} = {value!r}" for name, value in overrides.items()]
    (directory / f"{module}.py").write_text("\n".join(lines) + "\n")
    env = dict(site.env)
    path = [str(directory), str(REPO_ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(part for part in path if part)
    env["DJANGO_SETTINGS_MODULE"] = module
    return env


# --- HTTP, metrics and memory ---------------------------------------------------------------


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode("utf-8", "replace")


async def http_get(server: DaphneServer, path: str, seconds: float = HTTP_TIMEOUT) -> int:
    status, _ = await asyncio.to_thread(_get, f"{server.http_url}{path}", seconds)
    return status


async def metrics(server: DaphneServer) -> dict[str, float]:
    """The server's unlabelled samples from /metrics, by sample name."""
    status, text = await asyncio.to_thread(_get, f"{server.http_url}/metrics", HTTP_TIMEOUT)
    assert status == 200, text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def rss(server: DaphneServer) -> int:
    assert server.process is not None
    return int(psutil.Process(server.process.pid).memory_info().rss)


@contextlib.asynccontextmanager
async def rss_peak(server: DaphneServer, every: float = 0.05) -> AsyncIterator[list[int]]:
    """Sample the server's RSS while the block runs; the list holds the peak seen so far."""
    peak = [rss(server)]

    async def sample() -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], rss(server))
            await asyncio.sleep(every)

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], rss(server))


def mib(size: float) -> str:
    return f"{size / MIB:.1f}"


# --- events and clients ---------------------------------------------------------------------


def execution(graph_id: str, index: int, output: str = "") -> dict[str, Any]:
    """One ExecutionResult as an executor would POST it."""
    return {
        "graph_id": graph_id,
        "graph_version": 1,
        "graph_exec_id": f"graph-exec-{RUN}",
        "node_exec_id": f"node-exec-{index:05d}",
        "node_id": f"node-{index % 7}",
        "block_id": "block-ai-text",
        "status": "COMPLETED",
        "input_data": {"n": index},
        "output_data": {"response": [output or f"answer {index}"]},
        "add_time": "2025-01-02T03:04:05Z",
        "queue_time": None,
        "start_time": "2025-01-02T03:04:06Z",
        "end_time": "2025-01-02T03:04:07Z",
    }


@contextlib.asynccontextmanager
async def ws_client(
    server: DaphneServer, token: str, **options: Any
) -> AsyncIterator[ClientConnection]:
    options = {
        "open_timeout": RECEIVE_TIMEOUT,
        "close_timeout": 2,
        "compression": None,
        "ping_interval": None,
        **options,
    }
    async with connect(f"{server.ws_url}?token={token}", **options) as connection:
        yield connection


async def subscribe(connection: ClientConnection, graph_id: str, since: int | None) -> Any:
    """Subscribe (with since, unless None); return the server's acknowledgement."""
    data: dict[str, Any] = {"graph_id": graph_id}
    if since is not None:
        data["since"] = since
    await connection.send(json.dumps({"method": "subscribe", "data": data}))
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        reply = json.loads(await connection.recv())
    assert reply["method"] == "subscribe", reply
    assert reply["success"] is True, reply
    assert reply["channel"] == graph_id, reply
    return reply


@dataclass
class Received:
    """What one subscriber got: (seq, node_exec_id) per event frame, and how it ended."""

    events: list[tuple[int, str]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic() of each event
    other_frames: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _ in self.events]

    @property
    def nodes(self) -> set[str]:
        return {node for _, node in self.events}

    def add(self, frame: str | bytes) -> None:
        envelope = json.loads(frame)
        if envelope.get("method") == "execution_event":
            self.events.append((envelope.get("seq", 0), envelope["data"]["node_exec_id"]))
            self.arrived.append(time.monotonic())
        else:
            self.other_frames.append(frame if isinstance(frame, str) else frame.decode())


async def read_until(
    connection: ClientConnection, received: Received, done: Any, seconds: float
) -> Received:
    """Read frames into `received` until done(received), the server closes, or time is up."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while not done(received):
                try:
                    received.add(await connection.recv())
                except ConnectionClosed as closed:
                    rcvd = closed.rcvd
                    received.close_code = rcvd.code if rcvd is not None else 1006
                    received.close_reason = rcvd.reason if rcvd is not None else ""
                    break
    return received


def duplicates(seqs: Sequence[int]) -> int:
    return len(seqs) - len(set(seqs))


def out_of_order(seqs: Sequence[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(seqs) if b <= a)


# --- 1. a stalled client among ten readers --------------------------------------------------

SLOW_READERS = 10
SLOW_EVENTS = 5_000
SLOW_BATCH = 100
SLOW_OUTPUT_BYTES = 4096
SLOW_BACKLOG_BYTES = 1 * MIB
SLOW_RSS_CEILING = 150 * MIB
SLOW_TIMEOUT = 60.0
# The readers all live in this one process: the publisher never gets more than one batch ahead
# of the slowest (at most 2 batches, ~0.9 MiB, in flight to it, under the backlog limit), so a
# reader is never too slow by the test's own making. The stalled client gets no such favour.
SLOW_MAX_LAG = SLOW_BATCH
# Once the readers have everything, how much longer the server has to give up on the stalled one.
STALLED_CLOSE_GRACE = 5.0
STALLED_DRAIN_TIMEOUT = 20.0
SILENCE = 1.0


async def read_until_closed_or_silent(
    connection: ClientConnection, received: Received, seconds: float
) -> Received:
    """Read until the server closes, or nothing comes for SILENCE seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while received.close_code is None:
                try:
                    async with asyncio.timeout(SILENCE):
                        frame = await connection.recv()
                except ConnectionClosed as closed:
                    rcvd = closed.rcvd
                    received.close_code = rcvd.code if rcvd is not None else 1006
                    received.close_reason = rcvd.reason if rcvd is not None else ""
                else:
                    received.add(frame)
    return received


# Under daphne and uvicorn alike: each writes frames straight to its sockets (outbox.py) while
# they take them, and falls back to its own flow control once a socket is full.
@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
async def test_a_stalled_client_is_closed_with_4008_while_ten_readers_get_all_5000(
    faults: Faults, tmp_path: Path, server_name: str
) -> None:
    """One client stops reading: it is closed with 4008, the others lose nothing, RSS stays low."""
    server_class = {"daphne": DaphneServer, "uvicorn": UvicornServer}[server_name]
    slow_graph = SLOW_GRAPHS[server_name]
    env = settings_env(
        faults.site, tmp_path, "slow_settings", EXECUTIONS_MAX_BACKLOG_BYTES=SLOW_BACKLOG_BYTES
    )
    bodies = [
        execution(slow_graph, index, os.urandom(SLOW_OUTPUT_BYTES // 2).hex())
        for index in range(SLOW_EVENTS)
    ]
    expected = [(seq, body["node_exec_id"]) for seq, body in enumerate(bodies, start=1)]
    received = [Received() for _ in range(SLOW_READERS)]
    stalled_got = Received()

    with server_class(env, tmp_path, "slow") as server:
        baseline = rss(server)
        async with contextlib.AsyncExitStack() as stack:
            readers = [
                await stack.enter_async_context(ws_client(server, faults.token))
                for _ in range(SLOW_READERS)
            ]
            # Takes one frame into its queue, then stops reading the socket: its window fills.
            stalled = await stack.enter_async_context(
                ws_client(server, faults.token, max_queue=1, max_size=64 * 1024)
            )
            for connection in [*readers, stalled]:
                assert (await subscribe(connection, slow_graph, since=0))["data"]["head"] == 0

            async def server_gives_up() -> None:
                # Polls the server's counter: nothing here could set an Event for it.
                while (await metrics(server)).get(SLOW_DISCONNECTS, 0) < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)

            readers_done = asyncio.Event()
            gave_up_while_stalled: list[bool] = []

            async def readers_done_and_grace() -> None:
                await readers_done.wait()
                await asyncio.sleep(STALLED_CLOSE_GRACE)

            async def stall_then_drain() -> None:
                # Reads nothing until the server gives up on it (or has had every chance to);
                # then, at once (daphne waits 1 s for the close handshake), reads what it gets.
                gives_up = asyncio.create_task(server_gives_up())
                waits = [gives_up, asyncio.create_task(readers_done_and_grace())]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in waits:
                        task.cancel()
                gave_up_while_stalled.append(gives_up.done() and not gives_up.cancelled())
                await read_until_closed_or_silent(stalled, stalled_got, STALLED_DRAIN_TIMEOUT)

            collectors = [
                asyncio.create_task(
                    read_until(reader, got, lambda r: len(r.events) >= SLOW_EVENTS, SLOW_TIMEOUT)
                )
                for reader, got in zip(readers, received, strict=True)
            ]
            stalled_reader = asyncio.create_task(stall_then_drain())
            published = 0
            started = time.monotonic()
            try:
                async with rss_peak(server) as peak, asyncio.timeout(SLOW_TIMEOUT):
                    for start in range(0, SLOW_EVENTS, SLOW_BATCH):
                        while min(len(got.events) for got in received) < start - SLOW_MAX_LAG:
                            if any(c.done() for c in collectors):
                                break
                            await asyncio.sleep(0.005)
                        batch = bodies[start : start + SLOW_BATCH]
                        assert await post_executions(server, batch) == (
                            202,
                            {"accepted": len(batch)},
                        )
                        published += len(batch)
                    await asyncio.gather(*collectors)
                    seconds = time.monotonic() - started
                    readers_done.set()
                    await stalled_reader
            except TimeoutError:
                pytest.fail(
                    f"not done within {SLOW_TIMEOUT} s: published={published} "
                    f"readers={[len(got.events) for got in received]} "
                    f"closes={[got.close_code for got in received]} "
                    f"stalled={len(stalled_got.events)} {stalled_got.close_code}"
                )
            finally:
                for task in [*collectors, stalled_reader]:
                    task.cancel()
            server.assert_running()
            after = await metrics(server)

    delivered = [len(got.events) for got in received]
    print(
        f"slow consumer figures ({server_name}): readers={SLOW_READERS} events={SLOW_EVENTS} "
        f"delivered_each={min(delivered)}..{max(delivered)} "
        f"stalled_close={stalled_got.close_code} stalled_frames={len(stalled_got.events)} "
        f"slow_consumer_disconnects={after[SLOW_DISCONNECTS]:.0f} "
        f"rss_baseline_mib={mib(baseline)} rss_peak_mib={mib(peak[0])} "
        f"backlog_limit_mib={mib(SLOW_BACKLOG_BYTES)} seconds={seconds:.1f}"
    )
    for index, got in enumerate(received):
        assert got.close_code is None, f"reader {index} was closed: {got.close_code} {got}"
        assert got.events == expected, f"reader {index} did not get all {SLOW_EVENTS} in order"
    assert peak[0] - baseline < SLOW_RSS_CEILING, (
        f"RSS grew by {mib(peak[0] - baseline)} MiB, past {mib(SLOW_RSS_CEILING)} MiB"
    )
    assert stalled_got.seqs == list(range(1, len(stalled_got.seqs) + 1))
    kept = sum(len(json.dumps(body)) for body in bodies[: len(stalled_got.events)])
    # The server noticed the stalled client on its own, while it read nothing.
    assert gave_up_while_stalled == [True]
    assert stalled_got.close_code == SLOW_CONSUMER_CLOSE, (
        f"the stalled client was not closed with {SLOW_CONSUMER_CLOSE} "
        f"(slow_consumer_disconnects={after[SLOW_DISCONNECTS]:.0f}, close "
        f"{stalled_got.close_code}): when it read again it got {len(stalled_got.events)} of "
        f"{SLOW_EVENTS} events, ~{mib(kept)} MiB the server had kept for it"
    )
    assert len(stalled_got.events) < SLOW_EVENTS
    assert len(stalled_got.other_frames) == 1, stalled_got.other_frames
    error = json.loads(stalled_got.other_frames[0])
    assert error["method"] == "error", error
    assert "since" in error["error"], error
    assert "since" in stalled_got.close_reason or not stalled_got.close_reason
    assert after[SLOW_DISCONNECTS] == 1


# --- 2. Redis restarts while events are published ------------------------------------------

REDIS_DOWN_AT_LEAST = 2.0
REDIS_STARTUP_TIMEOUT = 10.0
READINESS_TIMEOUT = 15.0
OUTAGE_LIMIT = 15.0
ACCEPTED_BEFORE_OUTAGE = 30
ACCEPTED_AFTER_OUTAGE = 20
REDIS_TEST_TIMEOUT = 60.0
MARKER_NODE = "marker-after-recovery"
MARKER_TIMEOUT = 5.0
LIVE_RESTORE_TIMEOUT = 10.0


class RedisServer:
    """``redis-server`` of this test's own, without persistence, on a fixed port."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        with (self.log_dir / f"redis-{self.port}-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + REDIS_STARTUP_TIMEOUT
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5
        )
        try:
            while True:
                assert self.process.poll() is None, "redis-server exited at startup"
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                assert time.monotonic() < deadline, "redis-server did not answer in time"
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within a bounded wait."""
        stop_process(self.process, 5)


@contextlib.contextmanager
def own_redis(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), log_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass
class Post:
    index: int
    started: float
    finished: float
    status: int  # -1: no HTTP answer
    body: Any


async def test_redis_restart_mid_stream_loses_nothing_and_subscriptions_come_back(
    faults: Faults, tmp_path: Path
) -> None:
    """Redis stops for ~2 s while one server ingests and both serve subscribers, then returns."""
    with own_redis(tmp_path) as broker:
        env = faults.site.with_redis(broker.url, "pubsub")
        servers = (DaphneServer(env, tmp_path, "redis-a"), DaphneServer(env, tmp_path, "redis-b"))
        with running(*servers):
            async with asyncio.timeout(REDIS_TEST_TIMEOUT):
                await redis_restart_scenario(faults, broker, *servers)


async def redis_restart_scenario(
    faults: Faults, broker: RedisServer, server_a: DaphneServer, server_b: DaphneServer
) -> None:
    servers = (server_a, server_b)
    posts: list[Post] = []
    health_failures: list[str] = []
    stop_publishing = asyncio.Event()
    indexes = itertools.count()

    async def publish_one(body: dict[str, Any] | None = None) -> Post:
        index = next(indexes)
        started = time.monotonic()
        try:
            status, answer = await post_executions(
                server_a, body or execution(REDIS_GRAPH, index), seconds=HTTP_TIMEOUT
            )
        except Exception as exc:  # a POST without an answer is recorded, not raised
            status, answer = -1, repr(exc)
        post = Post(index, started, time.monotonic(), status, answer)
        if body is None:
            posts.append(post)
        return post

    async def publish_continuously() -> None:
        while not stop_publishing.is_set():
            await publish_one()
            await asyncio.sleep(0.01)

    async def watch_health() -> None:
        while True:
            for server in servers:
                if server.process is None or server.process.poll() is not None:
                    health_failures.append(f"{server.name} exited")
                try:
                    status = await http_get(server, "/healthz", seconds=2.0)
                except Exception as exc:
                    health_failures.append(f"{server.name} /healthz: {exc!r}")
                else:
                    if status != 200:
                        health_failures.append(f"{server.name} /healthz: {status}")
            await asyncio.sleep(0.1)

    async def readiness_is(status: int) -> float:
        """Poll both servers' /readyz until both answer `status`; return when that was."""
        async with asyncio.timeout(READINESS_TIMEOUT):
            while True:
                answers = await asyncio.gather(*(http_get(s, "/readyz") for s in servers))
                if all(answer == status for answer in answers):
                    return time.monotonic()
                await asyncio.sleep(0.05)

    def answered(status: int) -> list[Post]:
        return [post for post in posts if post.status == status]

    # The pub/sub channel of the graph's group on Redis: each process subscribes to it once.
    prefix = channel_layer_config(broker.url)["CONFIG"]["prefix"]
    group_channel = f"{prefix}__group__{graph_group_name(REDIS_GRAPH)}".encode()

    async def resubscribed() -> float:
        """When both processes are subscribed to the group on the restarted Redis again."""
        client = aioredis.Redis(host="127.0.0.1", port=broker.port, socket_connect_timeout=1)
        try:
            async with asyncio.timeout(LIVE_RESTORE_TIMEOUT):
                while True:
                    with contextlib.suppress(redis.RedisError):
                        if dict(await client.pubsub_numsub(group_channel)).get(group_channel) == 2:
                            return time.monotonic()
                    await asyncio.sleep(0.01)
        finally:
            await client.aclose()

    async def until(condition: Any, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not condition():  # noqa: ASYNC110 (state of several tasks, polled)
                    await asyncio.sleep(0.02)
                return True
        return False

    async with contextlib.AsyncExitStack() as stack:
        live = [
            await stack.enter_async_context(ws_client(server, faults.token)) for server in servers
        ]
        for connection in live:
            assert (await subscribe(connection, REDIS_GRAPH, since=0))["data"]["head"] == 0
        live_got = [Received() for _ in live]
        live_readers = [
            asyncio.create_task(read_until(connection, got, lambda r: False, REDIS_TEST_TIMEOUT))
            for connection, got in zip(live, live_got, strict=True)
        ]
        assert await readiness_is(200)
        health = asyncio.create_task(watch_health())
        publisher = asyncio.create_task(publish_continuously())
        resubscribing: asyncio.Task[float] | None = None
        try:
            assert await until(lambda: len(answered(202)) >= ACCEPTED_BEFORE_OUTAGE, 20), (
                f"POSTs before the outage: {statuses(posts)}"
            )

            broker.stop()
            down_at = time.monotonic()
            not_ready_at = await readiness_is(503)
            assert await until(
                lambda: (
                    time.monotonic() - down_at >= REDIS_DOWN_AT_LEAST
                    and sum(1 for p in answered(503) if p.started >= down_at) >= 2
                ),
                OUTAGE_LIMIT,
            ), f"POSTs during the outage: {statuses(posts)}"
            up_at = time.monotonic()  # from here on, a POST may find Redis back
            await asyncio.to_thread(broker.start)
            resubscribing = asyncio.create_task(resubscribed())
            ready_at = await readiness_is(200)
            stop_publishing.set()
            await publisher

            # Both servers say they are ready again: one event, then nothing for a while.
            marker = await publish_one(
                {**execution(REDIS_GRAPH, 99_999), "node_exec_id": MARKER_NODE}
            )
            marker_live = await until(
                lambda: all(MARKER_NODE in got.nodes for got in live_got), MARKER_TIMEOUT
            )

            # More events: they are accepted, and live delivery resumes on both connections.
            for _ in range(ACCEPTED_AFTER_OUTAGE):
                await publish_one()
            restored = await until(
                lambda: all(f"node-exec-{posts[-1].index:05d}" in got.nodes for got in live_got),
                LIVE_RESTORE_TIMEOUT,
            )
            resubscribed_at = await resubscribing
        finally:
            stop_publishing.set()
            publisher.cancel()
            health.cancel()
            for task in [*live_readers, resubscribing]:
                if task is not None:
                    task.cancel()
        for server in servers:
            server.assert_running()

        # A client that resumes from the start has every stored event, once, in order.
        async with ws_client(server_b, faults.token) as resumed:
            head = (await subscribe(resumed, REDIS_GRAPH, since=0))["data"]["head"]
            resumed_got = await read_until(resumed, Received(), lambda r: len(r.events) >= head, 20)

    outage = [p for p in posts if p.started >= down_at and p.finished <= up_at]
    after_recovery = [p for p in posts if p.started >= ready_at]
    stored_503 = [event["seq"] for post in answered(503) for event in post.body["stored"]]
    resumed_seqs = resumed_got.seqs
    print(
        f"redis restart figures: published={len(posts) + 1} "
        f"accepted_202={len(answered(202)) + (marker.status == 202)} "
        f"stored_503={len(stored_503)} resumed={len(resumed_got.events)} "
        f"duplicates={duplicates(resumed_seqs)} out_of_order={out_of_order(resumed_seqs)} "
        f"outage_s={up_at - down_at:.1f} readyz_503_after_s={not_ready_at - down_at:.2f} "
        f"readyz_200_after_restart_s={ready_at - up_at:.2f} marker_live={marker_live} "
        f"live_restored={restored} marker_posted_after_ready_s={marker.started - ready_at:.2f} "
        f"resubscribed_after_ready_s={resubscribed_at - ready_at:.2f} "
        f"live_a={len(live_got[0].events)} live_b={len(live_got[1].events)}"
    )

    assert health_failures == [], health_failures
    assert {post.status for post in posts} <= {202, 503}, statuses(posts)
    assert outage, "no POST was answered while Redis was down"
    assert all(post.status == 503 for post in outage), statuses(outage)
    for post in answered(503):
        assert [event["graph_id"] for event in post.body["stored"]] == [REDIS_GRAPH], post.body
    assert len(after_recovery) >= ACCEPTED_AFTER_OUTAGE
    assert all(post.status == 202 for post in after_recovery), statuses(after_recovery)
    assert (marker.status, marker.body) == (202, {"accepted": 1})

    assert head == len(posts) + 1, (head, len(posts))
    assert resumed_got.close_code is None
    assert resumed_seqs == list(range(1, head + 1))
    assert set(stored_503) <= set(resumed_seqs)
    published_nodes = {f"node-exec-{post.index:05d}" for post in posts} | {MARKER_NODE}
    assert resumed_got.nodes == published_nodes

    for server, got in zip(servers, live_got, strict=True):
        assert restored, (
            f"the client on {server.name} stayed connected but got no event published after "
            f"Redis came back: {len(got.events)} events, the last {got.events[-3:]}"
        )
        # A live client that sees a number past the next one fetches the gap from history.
        assert got.seqs == list(range(1, head + 1)), (duplicates(got.seqs), out_of_order(got.seqs))
    assert marker_live, (
        f"an event accepted (202) once both servers answered /readyz 200 after the restart "
        f"reached no live subscriber within {MARKER_TIMEOUT} s: it was published "
        f"{marker.started - ready_at:.2f} s after /readyz said ready, and the servers were "
        f"subscribed to the graph's group on Redis again only {resubscribed_at - ready_at:.2f} s "
        f"after it"
    )


def statuses(posts: Sequence[Post]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for post in posts:
        counts[post.status] = counts.get(post.status, 0) + 1
    return counts


# --- 3. a connection storm ------------------------------------------------------------------

STORM_CLIENTS = 1_000
STORM_BURST = 100
STORM_TIMEOUT = 60.0
STORM_RSS_MARGIN = 60 * MIB
STORM_SETTLE_TIMEOUT = 10.0


async def test_a_storm_of_1000_clients_leaves_no_connection_subscription_or_memory(
    faults: Faults, tmp_path: Path
) -> None:
    """1,000 clients connect, subscribe and go (some cleanly, some by dropping the TCP)."""
    env = settings_env(
        faults.site,
        tmp_path,
        "storm_settings",
        EXECUTIONS_MAX_CONNECTIONS_PER_USER=2 * STORM_CLIENTS,
    )

    async def one_client(number: int) -> None:
        async with ws_client(server, faults.token, open_timeout=20, close_timeout=5) as client:
            await subscribe(client, STORM_GRAPH, since=0 if number % 2 else None)
            if number % 4 == 0:
                client.transport.abort()  # gone without a close handshake, as a network failure

    with DaphneServer(env, tmp_path, "storm") as server:
        rss_start = rss(server)
        started = time.monotonic()
        async with rss_peak(server) as peak, asyncio.timeout(STORM_TIMEOUT):
            for burst in range(0, STORM_CLIENTS, STORM_BURST):
                await asyncio.gather(*(one_client(n) for n in range(burst, burst + STORM_BURST)))
        seconds = time.monotonic() - started

        gauges: dict[str, float] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STORM_SETTLE_TIMEOUT):
                while True:
                    gauges = await metrics(server)
                    if gauges["executions_connections"] == gauges["executions_subscriptions"] == 0:
                        break
                    await asyncio.sleep(0.1)
        server.assert_running()
        rss_end = rss(server)

    print(
        f"storm figures: clients={STORM_CLIENTS} seconds={seconds:.1f} "
        f"rss_start_mib={mib(rss_start)} rss_peak_mib={mib(peak[0])} rss_end_mib={mib(rss_end)}"
    )
    assert gauges["executions_connections"] == 0, gauges
    assert gauges["executions_subscriptions"] == 0, gauges
    assert rss_end - rss_start < STORM_RSS_MARGIN, (
        f"RSS stayed {mib(rss_end - rss_start)} MiB above its start"
    )


# --- 4. graceful shutdown -------------------------------------------------------------------

SHUTDOWN_DEADLINE = 5.0


async def test_sigterm_tells_subscribers_to_reconnect_with_1012_and_exits_in_time(
    faults: Faults, tmp_path: Path
) -> None:
    with DaphneServer(faults.site.env, tmp_path, "shutdown") as server:
        assert server.process is not None
        async with (
            ws_client(server, faults.token) as plain,
            ws_client(server, faults.token) as numbered,
        ):
            await subscribe(plain, SHUTDOWN_GRAPH, since=None)
            await subscribe(numbered, SHUTDOWN_GRAPH, since=0)
            assert await post_executions(server, execution(SHUTDOWN_GRAPH, 1)) == (
                202,
                {"accepted": 1},
            )
            got = [Received(), Received()]
            for connection, received in zip((plain, numbered), got, strict=True):
                async with asyncio.timeout(RECEIVE_TIMEOUT):
                    received.add(await connection.recv())

            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.gather(
                *(
                    read_until(connection, received, lambda r: False, SHUTDOWN_DEADLINE)
                    for connection, received in zip((plain, numbered), got, strict=True)
                )
            )
            closed_after = time.monotonic() - signalled
        try:
            code = await asyncio.to_thread(server.process.wait, SHUTDOWN_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daphne did not exit within {SHUTDOWN_DEADLINE} s of SIGTERM")
        exited_after = time.monotonic() - signalled

    print(
        f"shutdown figures: close_codes={[r.close_code for r in got]} "
        f"closed_after_s={closed_after:.2f} exited_after_s={exited_after:.2f} exit_code={code}"
    )
    for received in got:
        assert received.close_code == SERVICE_RESTART_CLOSE, received
        assert "since" in received.close_reason, received.close_reason
        assert len(received.events) == 1, received
        assert received.other_frames == [], received
    assert exited_after < SHUTDOWN_DEADLINE
    assert code == 0, server.output()


# --- heartbeats: half-open sockets are closed, quiet clients are not -----------------------

PING_INTERVAL = 1
PING_TIMEOUT = 2
# daphne checks its timers every 2 s: a silent socket is pinged within about 3 s and dropped
# about PING_TIMEOUT later; a quiet client that answers pings outlives several such rounds.
HALF_OPEN_DEADLINE = 15.0
QUIET_SECONDS = 8.0


def open_half_open_socket(server: DaphneServer, token: str) -> socket.socket:
    """A WebSocket handshake, then nothing: the client neither reads nor answers pings."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=RECEIVE_TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        (
            f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert raw.recv(1024).startswith(b"HTTP/1.1 101")
    return raw


async def until_open_connections(server: DaphneServer, count: int, seconds: float) -> None:
    poll = 0.1
    for _ in range(int(seconds / poll)):
        if (await metrics(server)).get("executions_connections") == count:
            return
        await asyncio.sleep(poll)
    pytest.fail(f"the server did not reach {count} open connections within {seconds} s")


async def test_half_open_sockets_are_closed_and_quiet_clients_are_not(
    faults: Faults, tmp_path: Path
) -> None:
    env = settings_env(
        faults.site,
        tmp_path,
        "ping_settings",
        EXECUTIONS_PING_INTERVAL=PING_INTERVAL,
        EXECUTIONS_PING_TIMEOUT=PING_TIMEOUT,
    )
    with DaphneServer(env, tmp_path, "pings") as server:
        # The quiet client answers pings (the websockets library does) but never sends a thing.
        async with ws_client(server, faults.token) as quiet:
            await subscribe(quiet, QUIET_GRAPH, since=None)
            half_open = await asyncio.to_thread(open_half_open_socket, server, faults.token)
            try:
                await until_open_connections(server, 2, RECEIVE_TIMEOUT)
                started = time.monotonic()
                await until_open_connections(server, 1, HALF_OPEN_DEADLINE)
                closed_after = time.monotonic() - started
                await asyncio.sleep(max(0.0, QUIET_SECONDS - closed_after))

                assert await post_executions(server, execution(QUIET_GRAPH, 1)) == (
                    202,
                    {"accepted": 1},
                )
                async with asyncio.timeout(RECEIVE_TIMEOUT):
                    event = json.loads(await quiet.recv())
            finally:
                half_open.close()
    assert event["channel"] == QUIET_GRAPH
    print(
        f"heartbeat figures: half_open_closed_after_s={closed_after:.1f} "
        f"quiet_client_open_s={max(QUIET_SECONDS, closed_after):.1f}"
    )
