"""Fan-out benchmark: the executions app against a FastAPI manager and raw websockets (issue 5).

Starts each server as a subprocess (a fresh one for every scenario), connects real WebSocket
subscribers from several worker processes (bench/loadgen.py), publishes numbered events and
checks that every subscriber got each of its events once and in order.

Servers (``--servers``, comma-separated):

* ``fastapi``: bench/baselines/fastapi_server.py, AutoGPT's in-process ConnectionManager.
* ``websockets``: bench/baselines/websockets_server.py, raw ``websockets`` + ``broadcast``;
  events come in over a publisher WebSocket on ``/publish`` (it serves no HTTP POST).
* ``daphne`` / ``daphne-redis``: ``daphne -v 0 -b 127.0.0.1 -p PORT project.asgi:application``
  on the in-memory layer / the Redis pub/sub layer.
* ``uvicorn`` / ``uvicorn-redis``: ``uvicorn project.asgi:application --no-access-log`` on the
  same two layers.

Our app runs on a fresh migrated site, with one user owning every graph and one WebSocket
token; it is published to through ``POST /api/executions`` with the ingest token, like the
FastAPI baseline (which ignores the token). ``--database`` picks the site's database:
``sqlite`` (the default; a file in a temporary directory, tests/servers.py) or ``postgres``: a
fresh database ``bench_<run id>`` created with psycopg on the server of ``--postgres-url``,
migrated, and dropped at the end of the run. The baselines store nothing either way.

Scenarios (``--scenarios``, comma-separated names or letters):

* (a) ``fanout``: 1 graph x 1000 subscribers, 200 events as fast as possible.
* (b) ``spread``: 100 graphs x 10 subscribers, 1000 events, event i to graph i % 100.
* (c) ``latency``: 10 subscribers, 500 single-event publishes paced at 100 events/s.
* (d) ``idle``: 2000 subscribed connections over 100 graphs; server RSS per connection and
  the server's CPU over an idle window; then one event per graph checks they all still work.
* (e) ``ingest``: events/s accepted by the ingest path, single-event and batched requests,
  from ``--ingest-concurrency`` concurrent publishers (50 in the full sizes), each on its own
  keep-alive connection with one request in flight, with nobody subscribed.
* (f) ``ingest-delivered``: events stored and delivered: ``--delivered-publishers`` concurrent
  publishers (4) send ``--delivered-events`` events (200,000) to one graph in batched requests
  (``--delivered-batch``, 500 events each), each publisher its own contiguous range of event
  numbers, in order; ``--delivered-subscribers`` WebSocket subscribers (1) of the graph count
  what they receive (lost, duplicated, and out of order within each publisher's range, as the
  order across concurrent publishers is not defined). Reports the events/s accepted (202 from
  the server: our app answers once they are stored), the events the database holds for the
  graph afterwards (its sequence head, our app only), and the figure: events/s delivered, every
  subscriber's events over the time from the first publish to the last frame received.

The fan-out scenarios publish in batches (one request in flight, so the order is defined). Every
row reports delivered / expected, lost, duplicated, out of order, delivered frames/s,
publish-to-receive latency, the client's CPU seconds (all workers) and the server's (psutil),
and its figure's ratio against the FastAPI baseline of the same run.

Writes bench/results/<timestamp>.jsonl (``-postgres`` suffixed on PostgreSQL, ``-quick`` for
``--quick``), a Markdown table to stdout and bench/results/latest.md, and
bench/results/latest.png (``latest-postgres`` on PostgreSQL). Run from anywhere:

    .venv/bin/python bench/run.py                  # full sizes, under 10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick          # scaled-down smoke run
    .venv/bin/python bench/run.py --servers fastapi,daphne --scenarios a,c
    .venv/bin/python bench/run.py --servers fastapi,daphne,uvicorn --scenarios f \
        --database postgres

Every wait is bounded: a scenario that stalls (nothing arrives for a few seconds) records
what arrived and moves on, and ``--budget`` seconds bound the whole run (later rows are
recorded as skipped).
"""

import argparse
import asyncio
import atexit
import contextlib
import dataclasses
import json
import multiprocessing
import os
import platform
import secrets
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import loadgen  # noqa: E402

RESULTS = BENCH / "results"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DATABASES = ("sqlite", "postgres")
HOST = "127.0.0.1"

BASELINE = "fastapi"
SERVERS = ("fastapi", "websockets", "daphne", "uvicorn", "daphne-redis", "uvicorn-redis")
SCENARIOS = ("fanout", "spread", "latency", "idle", "ingest", "ingest-delivered")
SCENARIO_LETTERS = dict(zip("abcdef", SCENARIOS, strict=True))

STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
WORKER_EXIT_TIMEOUT = 5.0
SETTLE_SECONDS = 1.0  # after the last subscribe ack, before measuring idle memory
GRACE_SECONDS = 0.3  # after every expected frame arrived, to catch duplicates
MIN_SECONDS_LEFT = 15.0  # a row starts only with this much of the budget left
POSTGRES_TIMEOUT = 10.0  # connecting to PostgreSQL, creating or dropping a database
MIGRATE_TIMEOUT = 180.0

# About the size of a real node result: the frame every subscriber receives is ~650 bytes.
OUTPUT_PADDING = "x" * 180
STAMP = "2025-01-01T00:00:00Z"


@dataclass(frozen=True)
class Sizes:
    fanout_subscribers: int = 1000
    fanout_events: int = 200
    spread_graphs: int = 100
    spread_subscribers: int = 10
    spread_events: int = 1000
    publish_batch: int = 50
    latency_subscribers: int = 10
    latency_events: int = 500
    latency_rate: float = 100.0
    idle_connections: int = 2000
    idle_graphs: int = 100
    idle_seconds: float = 5.0
    ingest_seconds: float = 3.0
    ingest_batch: int = 100
    ingest_concurrency: int = 50
    delivered_events: int = 200_000
    delivered_batch: int = 500
    delivered_publishers: int = 4
    delivered_subscribers: int = 1
    connect_timeout: float = 60.0
    delivery_deadline: float = 60.0
    stall_seconds: float = 5.0


FULL = Sizes()
QUICK = Sizes(
    fanout_subscribers=100,
    fanout_events=50,
    spread_graphs=10,
    spread_subscribers=5,
    spread_events=100,
    publish_batch=25,
    latency_subscribers=5,
    latency_events=50,
    idle_connections=200,
    idle_graphs=10,
    idle_seconds=1.0,
    ingest_seconds=1.0,
    ingest_batch=50,
    ingest_concurrency=4,
    delivered_events=5_000,
    delivered_batch=100,
    delivered_publishers=2,
    connect_timeout=30.0,
    delivery_deadline=20.0,
    stall_seconds=3.0,
)


# ----------------------------------------------------------------------------------------
# Servers


_live_processes: list[subprocess.Popen[bytes]] = []


def _kill_leftovers() -> None:
    for process in _live_processes:
        if process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=SHUTDOWN_TIMEOUT)


atexit.register(_kill_leftovers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerSpec:
    name: str
    app: str  # "ours", "fastapi" or "websockets"
    layer: str
    env: dict[str, str]
    token: str = ""  # WebSocket token (?token=)
    ingest_token: str = ""  # Bearer token of POST /api/executions
    asgi: str = "project.asgi:application"  # our app's ASGI entry (bench/probe_asgi.py wraps it)
    database: str = ""  # our app's: "sqlite" or "postgres"; the baselines store nothing

    def command(self, port: int) -> list[str]:
        python = sys.executable
        if self.app == "fastapi":
            return [python, str(BENCH / "baselines" / "fastapi_server.py"), "--port", str(port)]
        if self.app == "websockets":
            return [python, str(BENCH / "baselines" / "websockets_server.py"), "--port", str(port)]
        if self.name.startswith("daphne"):
            # -v 0: no access log line per request and per connection, as uvicorn runs here.
            daphne = ["-m", "daphne", "-v", "0", "-b", HOST, "-p", str(port)]
            return [python, *daphne, self.asgi]
        uvicorn = ["-m", "uvicorn", self.asgi, "--host", HOST, "--port"]
        return [python, *uvicorn, str(port), "--no-access-log", "--log-level", "warning"]


class Server:
    """One server subprocess on a free port, with its log, CPU time and RSS."""

    def __init__(self, spec: ServerSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_dir = log_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.ps: Any = None

    @property
    def ws_url(self) -> str:
        query = f"?token={self.spec.token}" if self.spec.token else ""
        return f"ws://{HOST}:{self.port}/ws{query}"

    def start(self) -> None:
        import psutil

        self.port = free_port()
        self.log_path = self.log_dir / f"{self.spec.name}-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.spec.command(self.port),
                cwd=ROOT,
                env=self.spec.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _live_processes.append(self.process)
        self.ps = psutil.Process(self.process.pid)

    async def wait_ready(self, seconds: float = STARTUP_TIMEOUT) -> None:
        assert self.process is not None
        deadline = time.monotonic() + seconds
        clashes = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "Address already in use" in self.output() and clashes < 3:
                    clashes += 1
                    self.start()
                    continue
                raise RuntimeError(f"{self.spec.name} exited early:\n{self.output()[-2000:]}")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), 1)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return
        raise RuntimeError(f"{self.spec.name} did not answer within {seconds:.0f} s")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=SHUTDOWN_TIMEOUT)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds so far (0 once the process is gone)."""
        if not self.alive():
            return 0.0
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss) if self.alive() else 0

    def output(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


# ----------------------------------------------------------------------------------------
# Publishing


def make_event(graph_id: str, seq: int) -> dict[str, Any]:
    """An execution result numbered `seq`, stamped with its send time in input_data."""
    return {
        "graph_id": graph_id,
        "graph_version": 1,
        "graph_exec_id": "bench-graph-exec",
        "node_exec_id": str(seq),
        "node_id": "bench-node",
        "block_id": "bench-block",
        "status": "COMPLETED",
        "input_data": {"bench_t": time.time_ns()},
        "output_data": {"result": [OUTPUT_PADDING]},
        "add_time": STAMP,
        "queue_time": STAMP,
        "start_time": STAMP,
        "end_time": STAMP,
    }


class PublishError(Exception):
    pass


class HttpPublisher:
    """``POST /api/executions`` over one keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.head = (
            f"POST /api/executions HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Content-Type: application/json\r\n"
            + (f"Authorization: Bearer {token}\r\n" if token else "")
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def clone(self) -> "HttpPublisher":
        """Another publisher to the same server, on a connection of its own."""
        return HttpPublisher(self.port, self.token)

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)
        self.reader = self.writer = None

    async def send(self, body: bytes) -> int:
        """Publish a JSON body (one result or an array); return how many were accepted."""
        status, payload = await asyncio.wait_for(self._post(body), REQUEST_TIMEOUT)
        if status not in (200, 202):
            raise PublishError(f"HTTP {status}: {payload[:300]!r}")
        return int(json.loads(payload)["accepted"])

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        reader = self.reader
        self.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status_line = await reader.readline()
        if not status_line:
            await self.close()
            raise PublishError("the server closed the connection")
        status = int(status_line.split()[1])
        length: int | None = None
        chunked = close = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            payload = b"".join(parts)
        elif length is not None:
            payload = await reader.readexactly(length)
        else:
            payload, close = await reader.read(), True
        if close:
            await self.close()
        return status, payload


class WsPublisher:
    """The websockets baseline's publisher connection on /publish, acknowledged per message."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"ws://{HOST}:{port}/publish"
        self.connection: Any = None

    def clone(self) -> "WsPublisher":
        """Another publisher to the same server, on a connection of its own."""
        return WsPublisher(self.port)

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        self.connection = await asyncio.wait_for(
            connect(self.url, compression=None, max_size=None, ping_interval=None),
            REQUEST_TIMEOUT,
        )

    async def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.close(), 2)
            self.connection = None

    async def send(self, body: bytes) -> int:
        if self.connection is None:
            await self.open()

        async def exchange() -> Any:
            await self.connection.send(b'{"method":"publish","data":' + body + b"}", text=True)
            return json.loads(await self.connection.recv())

        reply = await asyncio.wait_for(exchange(), REQUEST_TIMEOUT)
        if not reply.get("success"):
            raise PublishError(str(reply.get("error")))
        return int(reply["data"]["accepted"])


Publisher = HttpPublisher | WsPublisher


def make_publisher(server: Server) -> Publisher:
    if server.spec.app == "websockets":
        return WsPublisher(server.port)
    return HttpPublisher(server.port, server.spec.ingest_token)


def body_of(events: list[dict[str, Any]], as_list: bool) -> bytes:
    return json.dumps(events if as_list else events[0], separators=(",", ":")).encode()


async def publish_batched(
    publisher: Publisher, graph_ids: Sequence[str], plan: Sequence[int], batch: int
) -> int:
    """Every event of the plan in order, `batch` per request, one request in flight."""
    published = 0
    for start in range(0, len(plan), batch):
        seqs = range(start, min(start + batch, len(plan)))
        events = [make_event(graph_ids[plan[seq]], seq) for seq in seqs]
        published += await publisher.send(body_of(events, as_list=True))
    return published


class EventTemplate:
    """``make_event``'s JSON for one graph with the number and send time left open: a batch of
    thousands of events is then a bytes format per event, not a dict and ``json.dumps`` each,
    so that the publisher (this process, on the same cores as the server) stays cheap."""

    SEQ = '"node_exec_id":"0"'
    SENT = '"bench_t":0'

    def __init__(self, graph_id: str) -> None:
        event = make_event(graph_id, 0)
        event["input_data"] = {"bench_t": 0}
        text = json.dumps(event, separators=(",", ":")).replace("%", "%%")
        # node_exec_id comes before input_data in make_event, so (seq, sent) is the order.
        assert text.count(self.SEQ) == 1
        assert text.count(self.SENT) == 1
        assert text.index(self.SEQ) < text.index(self.SENT)
        text = text.replace(self.SEQ, '"node_exec_id":"%d"').replace(self.SENT, '"bench_t":%d')
        self.template = text.encode()

    def batch(self, seqs: Iterable[int]) -> bytes:
        """A JSON array of the events numbered `seqs`, stamped with the time now."""
        template, sent = self.template, time.time_ns()
        return b"[" + b",".join([template % (seq, sent) for seq in seqs]) + b"]"


@dataclass
class Progress:
    """What concurrent publishers have done so far (kept when a deadline cancels them)."""

    accepted: int = 0
    requests: int = 0
    first_send: float = 0.0  # time.monotonic()
    last_reply: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.last_reply - self.first_send if self.first_send else 0.0


async def publish_concurrently(
    first: Publisher,
    graph_id: str,
    events: int,
    batch: int,
    publishers: int,
    progress: Progress,
) -> int:
    """Events ``0..events-1`` to one graph from `publishers` connections at once, `batch` per
    request, one request in flight each; publisher p sends the p-th contiguous range (of
    loadgen.stream_size numbers) in order. A publisher that fails stops; the others go on."""
    size = loadgen.stream_size(events, publishers)
    clients = [first, *(first.clone() for _ in range(publishers - 1))]
    template = EventTemplate(graph_id)

    async def one(client: Publisher, low: int, high: int) -> None:
        for start in range(low, high, batch):
            body = template.batch(range(start, min(start + batch, high)))
            if not progress.first_send:
                progress.first_send = time.monotonic()
            try:
                # Awaited first: `progress.accepted += await ...` would read the total before the
                # await and lose what the other publishers added meanwhile.
                accepted = await client.send(body)
            except (TimeoutError, PublishError, OSError) as exc:
                progress.errors.append(f"publish failed: {type(exc).__name__}: {exc}"[:300])
                return
            progress.accepted += accepted
            progress.requests += 1
            progress.last_reply = time.monotonic()

    try:
        for client in clients:
            await asyncio.wait_for(client.open(), REQUEST_TIMEOUT)
        ranges = [(low, min(low + size, events)) for low in range(0, events, size)]
        await asyncio.gather(
            *(one(client, low, high) for client, (low, high) in zip(clients, ranges, strict=False))
        )
    finally:
        for client in clients[1:]:  # the caller closes the first
            await client.close()
    return progress.accepted


async def publish_paced(
    publisher: Publisher, graph_ids: Sequence[str], plan: Sequence[int], rate: float
) -> int:
    """One event per request, on a fixed schedule of `rate` per second (no drift)."""
    published = 0
    started = time.monotonic()
    for seq, graph_index in enumerate(plan):
        delay = started + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        event = make_event(graph_ids[graph_index], seq)
        published += await publisher.send(body_of([event], as_list=False))
    return published


# ----------------------------------------------------------------------------------------
# Load generator workers


class WorkerPool:
    """loadgen worker processes, one pipe each; every wait on them is bounded."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        for spec in specs:
            parent, child = context.Pipe()
            process = context.Process(
                target=loadgen.worker_main, args=(spec, child), daemon=True, name="bench-worker"
            )
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)

    async def collect(self, kind: str, seconds: float) -> list[tuple[str, Any]]:
        """Each worker's next message: (kind, payload), ("error", text) or ("timeout", text)."""
        replies: list[tuple[str, Any] | None] = [None] * len(self.pipes)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(reply is None for reply in replies):
            for index, pipe in enumerate(self.pipes):
                if replies[index] is None:
                    try:
                        if pipe.poll():
                            replies[index] = pipe.recv()
                    except (EOFError, OSError):
                        replies[index] = ("error", "worker exited")
            await asyncio.sleep(0.02)
        return [reply or ("timeout", f"no {kind} within {seconds:.0f} s") for reply in replies]

    def send_all(self, message: tuple[str, Any]) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(message)

    async def close(self) -> None:
        self.send_all(("stop", None))
        for _ in range(int(WORKER_EXIT_TIMEOUT / 0.05)):
            if not any(process.is_alive() for process in self.processes):
                break
            await asyncio.sleep(0.05)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(2)
            if process.is_alive():
                process.kill()
                process.join(2)
        for pipe in self.pipes:
            pipe.close()


def split_round_robin(items: Sequence[Any], parts: int) -> list[list[Any]]:
    return [list(items[index::parts]) for index in range(parts) if items[index::parts]]


# ----------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Context:
    sizes: Sizes
    quick: bool
    workers: int
    client: str
    graph_ids: list[str]
    log_dir: Path
    deadline: float  # time.monotonic() by which the run must end
    run_id: str
    database: str = "sqlite"  # our app's database
    # A graph's sequence head in our app's database (the events it ever stored), or None.
    graph_head: Callable[[str], int | None] | None = None


def percentile(ordered: Sequence[int], fraction: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(fraction * (len(ordered) - 1) + 0.5))])


def empty_row(server: ServerSpec, scenario: str, label: str) -> dict[str, Any]:
    return {
        "server": server.name,
        "app": server.app,
        "layer": server.layer,
        "database": server.database or None,
        "scenario": scenario,
        "label": label,
        "subscribers": 0,
        "connected": 0,
        "events": 0,
        "published": 0,
        "expected": 0,
        "delivered": 0,
        "unique": 0,
        "lost": 0,
        "duplicated": 0,
        "out_of_order": 0,
        "foreign": 0,
        "frames_per_s": None,
        "latency_p50_ms": None,
        "latency_p99_ms": None,
        "latency_max_ms": None,
        "client_cpu_s": None,
        "client_connect_cpu_s": None,
        "server_cpu_s": None,
        "publisher_cpu_s": None,
        "connect_s": None,
        "elapsed_s": None,
        "rss_before": None,
        "rss_after": None,
        "rss_per_connection_kib": None,
        "idle_server_cpu_s": None,
        "events_per_s": None,
        "figure": None,
        "notes": [],
    }


async def start_server(spec: ServerSpec, ctx: Context) -> Server:
    """Start a fresh server and warm it: one subscribe, one publish to an empty graph."""
    server = Server(spec, ctx.log_dir)
    server.start()
    try:
        await server.wait_ready()
        state = loadgen.WorkerState([0])
        subscriber = await loadgen.open_lean(
            server.ws_url, ctx.graph_ids[0], loadgen.Tally(state, 0), 10
        )
        subscriber.close()
        publisher = make_publisher(server)
        try:
            warm = make_event(f"bench-{ctx.run_id}-warm", 0)
            await publisher.send(body_of([warm], as_list=True))
        finally:
            await publisher.close()
    except Exception as exc:
        server.stop()
        tail = server.output()[-800:] or "<no output>"
        raise RuntimeError(f"warm-up failed: {exc!r}; server output: {tail}") from exc
    except BaseException:
        server.stop()
        raise
    return server


PublishPlan = Callable[[Publisher], Awaitable[int]]


async def run_delivery(
    ctx: Context,
    spec: ServerSpec,
    scenario: str,
    label: str,
    subscriptions: list[tuple[str, int]],
    plan: list[int],
    publish: PublishPlan,
    deadline: float,
    idle_seconds: float = 0.0,
    streams: int = 1,
) -> dict[str, Any]:
    """Subscribers in worker processes, a publisher here; the row of what arrived.

    `streams`: the number of concurrent publishers `publish` runs (see loadgen's ``streams``)."""
    sizes = ctx.sizes
    row = empty_row(spec, scenario, label)
    per_graph = loadgen.expected_per_graph(plan, len(ctx.graph_ids))
    row.update(
        subscribers=len(subscriptions),
        events=len(plan),
        expected=sum(per_graph[graph_index] for _, graph_index in subscriptions),
    )
    notes: list[str] = row["notes"]
    server = await start_server(spec, ctx)
    pool: WorkerPool | None = None
    try:
        rss_before = server.rss()
        specs = [
            {
                "url": server.ws_url,
                "subscriptions": share,
                "plan": plan,
                "graphs": len(ctx.graph_ids),
                "concurrency": max(1, 40 // ctx.workers),
                "connect_timeout": sizes.connect_timeout,
                "go_timeout": sizes.connect_timeout + idle_seconds + 60,
                "client": ctx.client,
                "streams": streams,
            }
            for share in split_round_robin(subscriptions, ctx.workers)
        ]
        pool = WorkerPool(specs)
        ready = await pool.collect("ready", sizes.connect_timeout + 30)
        connected = failed = 0
        connect_s = 0.0
        for kind, payload in ready:
            if kind != "ready":
                notes.append(f"worker: {payload}")
                continue
            connected += payload["connected"]
            failed += payload["failed"]
            connect_s = max(connect_s, payload["connect_s"])
            notes.extend(f"connect: {error}" for error in payload["errors"][:2])
        row.update(connected=connected, connect_s=round(connect_s, 2))
        if failed:
            notes.insert(0, f"{failed} of {len(subscriptions)} connections failed")
        if idle_seconds:
            await asyncio.sleep(SETTLE_SECONDS)
            rss_after = server.rss()
            row.update(rss_before=rss_before, rss_after=rss_after)
            if connected:
                per_connection = (rss_after - rss_before) / connected / 1024
                row["rss_per_connection_kib"] = round(per_connection, 1)
            idle_cpu = server.cpu_seconds()
            await asyncio.sleep(idle_seconds)
            row["idle_server_cpu_s"] = round(server.cpu_seconds() - idle_cpu, 3)

        server_cpu = server.cpu_seconds()
        publisher_cpu = time.process_time()
        pool.send_all(
            ("go", {"stall": sizes.stall_seconds, "deadline": deadline, "grace": GRACE_SECONDS})
        )
        started_ns = time.time_ns()
        publisher = make_publisher(server)
        try:
            row["published"] = await asyncio.wait_for(publish(publisher), deadline)
        except TimeoutError:
            notes.append(f"publishing did not finish within the {deadline:g} s deadline")
        except (PublishError, OSError) as exc:
            notes.append(f"publish failed: {type(exc).__name__}: {exc}"[:300])
        finally:
            await publisher.close()
        row["publisher_cpu_s"] = round(time.process_time() - publisher_cpu, 3)
        results = await pool.collect("result", deadline + sizes.stall_seconds + 15)
        if server.alive():
            row["server_cpu_s"] = round(server.cpu_seconds() - server_cpu, 3)
        else:
            notes.append(f"server exited: {server.output()[-300:]}")
        fill_delivery(row, results, started_ns, deadline, sizes.stall_seconds)
    finally:
        if pool is not None:
            await pool.close()
        server.stop()
    return row


def fill_delivery(
    row: dict[str, Any],
    results: list[tuple[str, Any]],
    started_ns: int,
    deadline: float,
    stall: float,
) -> None:
    notes: list[str] = row["notes"]
    latencies: list[int] = []
    last_rx = 0
    client_cpu = connect_cpu = 0.0
    for kind, result in results:
        if kind != "result":
            notes.append(f"worker: {result}")
            continue
        for key in ("delivered", "unique", "duplicated", "out_of_order", "foreign"):
            row[key] += result[key]
        latencies.extend(result["latencies_us"])
        last_rx = max(last_rx, result["last_rx_ns"])
        client_cpu += result["cpu_s"]
        connect_cpu += result["cpu_connect_s"]
        if result["stalled"]:
            notes.append(f"stalled: nothing arrived for {stall:g} s, the rest counts as lost")
        if result["timed_out"]:
            notes.append(
                f"stopped at the {deadline:g} s deadline while frames still arrived: "
                "lost includes frames not delivered yet"
            )
        if result["closed_by_server"]:
            notes.append(f"{result['closed_by_server']} connections closed by the server")
        notes.extend(result["errors"][:2])
    row["lost"] = row["expected"] - row["unique"]
    if row["foreign"]:
        notes.append(f"{row['foreign']} frames of another graph or unknown event number")
    row["client_cpu_s"] = round(client_cpu, 3)
    row["client_connect_cpu_s"] = round(connect_cpu, 3)
    if last_rx > started_ns:
        elapsed = (last_rx - started_ns) / 1e9
        row["elapsed_s"] = round(elapsed, 3)
        row["frames_per_s"] = round(row["delivered"] / elapsed, 1)
    if latencies:
        latencies.sort()
        row["latency_p50_ms"] = round(percentile(latencies, 0.50) / 1000, 2)
        row["latency_p99_ms"] = round(percentile(latencies, 0.99) / 1000, 2)
        row["latency_max_ms"] = round(latencies[-1] / 1000, 2)
    row["notes"] = list(dict.fromkeys(notes))  # de-duplicated, in order


async def scenario_fanout(ctx: Context, spec: ServerSpec) -> list[dict[str, Any]]:
    s = ctx.sizes
    plan = [0] * s.fanout_events

    def publish(publisher: Publisher) -> Awaitable[int]:
        return publish_batched(publisher, ctx.graph_ids, plan, s.publish_batch)

    label = (
        f"1 graph x {s.fanout_subscribers} subscribers, {s.fanout_events} events "
        f"in batches of {s.publish_batch}"
    )
    subscriptions = [(ctx.graph_ids[0], 0)] * s.fanout_subscribers
    row = await run_delivery(
        ctx, spec, "fanout", label, subscriptions, plan, publish, s.delivery_deadline
    )
    row["figure"] = row["frames_per_s"]
    return [row]


async def scenario_spread(ctx: Context, spec: ServerSpec) -> list[dict[str, Any]]:
    s = ctx.sizes
    plan = [seq % s.spread_graphs for seq in range(s.spread_events)]

    def publish(publisher: Publisher) -> Awaitable[int]:
        return publish_batched(publisher, ctx.graph_ids, plan, s.publish_batch)

    label = (
        f"{s.spread_graphs} graphs x {s.spread_subscribers} subscribers, {s.spread_events} "
        f"events round-robin in batches of {s.publish_batch}"
    )
    subscriptions = [
        (ctx.graph_ids[graph], graph)
        for graph in range(s.spread_graphs)
        for _ in range(s.spread_subscribers)
    ]
    row = await run_delivery(
        ctx, spec, "spread", label, subscriptions, plan, publish, s.delivery_deadline
    )
    row["figure"] = row["frames_per_s"]
    return [row]


async def scenario_latency(ctx: Context, spec: ServerSpec) -> list[dict[str, Any]]:
    s = ctx.sizes
    plan = [0] * s.latency_events

    def publish(publisher: Publisher) -> Awaitable[int]:
        return publish_paced(publisher, ctx.graph_ids, plan, s.latency_rate)

    label = (
        f"{s.latency_subscribers} subscribers, {s.latency_events} single-event publishes "
        f"at {s.latency_rate:g}/s"
    )
    subscriptions = [(ctx.graph_ids[0], 0)] * s.latency_subscribers
    deadline = s.latency_events / s.latency_rate + s.delivery_deadline
    row = await run_delivery(ctx, spec, "latency", label, subscriptions, plan, publish, deadline)
    row["figure"] = row["latency_p99_ms"]
    return [row]


async def scenario_idle(ctx: Context, spec: ServerSpec) -> list[dict[str, Any]]:
    s = ctx.sizes
    plan = list(range(s.idle_graphs))

    def publish(publisher: Publisher) -> Awaitable[int]:
        return publish_batched(publisher, ctx.graph_ids, plan, s.publish_batch)

    label = (
        f"{s.idle_connections} idle subscribed connections over {s.idle_graphs} graphs, "
        f"{s.idle_seconds:g} s idle, then 1 event per graph"
    )
    subscriptions = [
        (ctx.graph_ids[index % s.idle_graphs], index % s.idle_graphs)
        for index in range(s.idle_connections)
    ]
    row = await run_delivery(
        ctx,
        spec,
        "idle",
        label,
        subscriptions,
        plan,
        publish,
        s.delivery_deadline,
        idle_seconds=s.idle_seconds,
    )
    row["figure"] = row["rss_per_connection_kib"]
    if row["rss_before"]:
        row["notes"].insert(
            0,
            f"RSS {row['rss_before'] / 2**20:.1f} -> {row['rss_after'] / 2**20:.1f} MiB; "
            f"server CPU {row['idle_server_cpu_s']} s over {s.idle_seconds:g} s idle",
        )
    return [row]


async def scenario_ingest(ctx: Context, spec: ServerSpec) -> list[dict[str, Any]]:
    s = ctx.sizes
    server = await start_server(spec, ctx)
    rows = []
    try:
        for batch in (1, s.ingest_batch):
            kind = "single" if batch == 1 else "batched"
            label = (
                f"{batch} event{'s' if batch > 1 else ''} per request, {s.ingest_concurrency} "
                f"concurrent publishers (keep-alive connections), {s.ingest_seconds:g} s, "
                "no subscribers"
            )
            row = empty_row(spec, f"ingest-{kind}", label)
            events = [make_event(ctx.graph_ids[0], seq) for seq in range(batch)]
            body = body_of(events, as_list=batch > 1)
            await measure_ingest(server, row, body, batch, s.ingest_concurrency, s.ingest_seconds)
            rows.append(row)
    finally:
        server.stop()
    return rows


async def measure_ingest(
    server: Server, row: dict[str, Any], body: bytes, batch: int, clients: int, seconds: float
) -> None:
    publishers = [make_publisher(server) for _ in range(clients)]
    sent = accepted = 0
    errors: list[str] = []

    async def client(publisher: Publisher, stop_at: float) -> None:
        nonlocal sent, accepted
        while time.monotonic() < stop_at:
            sent += batch
            try:
                count = await publisher.send(body)
                accepted += count
            except (TimeoutError, PublishError, OSError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                return

    try:
        for publisher in publishers:
            await asyncio.wait_for(publisher.open(), REQUEST_TIMEOUT)
        server_cpu = server.cpu_seconds()
        client_cpu = time.process_time()
        started = time.monotonic()
        stop_at = started + seconds
        await asyncio.wait_for(
            asyncio.gather(*(client(p, stop_at) for p in publishers)),
            seconds + REQUEST_TIMEOUT + 5,
        )
        elapsed = time.monotonic() - started
        row["server_cpu_s"] = round(server.cpu_seconds() - server_cpu, 3)
        row["client_cpu_s"] = round(time.process_time() - client_cpu, 3)
    except (TimeoutError, OSError, PublishError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:200])
        elapsed = seconds
    finally:
        for publisher in publishers:
            await publisher.close()
    row.update(
        events=sent,
        published=sent,
        expected=sent,
        delivered=accepted,
        unique=accepted,
        lost=sent - accepted,
        elapsed_s=round(elapsed, 3),
        events_per_s=round(accepted / elapsed, 1) if elapsed else None,
    )
    row["figure"] = row["events_per_s"]
    row["notes"].extend(dict.fromkeys(errors))


async def scenario_ingest_delivered(ctx: Context, spec: ServerSpec) -> list[dict[str, Any]]:
    s = ctx.sizes
    graph_id = ctx.graph_ids[0]
    publishers = max(1, min(s.delivered_publishers, s.delivered_events))
    subscribers = max(1, s.delivered_subscribers)
    plan = [0] * s.delivered_events
    progress = Progress()

    def publish(publisher: Publisher) -> Awaitable[int]:
        return publish_concurrently(
            publisher, graph_id, s.delivered_events, s.delivered_batch, publishers, progress
        )

    label = (
        f"{s.delivered_events:,} events to 1 graph in batches of {s.delivered_batch} from "
        f"{publishers} concurrent publishers (keep-alive connections), {subscribers} "
        f"subscriber{'s' if subscribers > 1 else ''}"
    )
    stored_before = read_head(ctx, spec, graph_id)
    row = await run_delivery(
        ctx,
        spec,
        "ingest-delivered",
        label,
        [(graph_id, 0)] * subscribers,
        plan,
        publish,
        s.delivery_deadline,
        streams=publishers,
    )
    stored_after = read_head(ctx, spec, graph_id)
    notes: list[str] = row["notes"]
    notes.extend(error for error in dict.fromkeys(progress.errors) if error not in notes)
    row["published"] = max(row["published"], progress.accepted)  # kept past a deadline
    seconds = progress.seconds
    accepted_per_s = round(progress.accepted / seconds, 1) if seconds else None
    stored = None
    if stored_before is not None and stored_after is not None:
        stored = stored_after - stored_before
    delivered_per_s = None
    if row["elapsed_s"] and row["subscribers"]:
        # Every subscriber's events over the time until the last of them arrived.
        delivered_per_s = round(row["unique"] / row["subscribers"] / row["elapsed_s"], 1)
    row.update(
        publishers=publishers,
        batch=s.delivered_batch,
        requests=progress.requests,
        publish_s=round(seconds, 3),
        accepted=progress.accepted,
        accepted_per_s=accepted_per_s,
        stored=stored,
        delivered_per_s=delivered_per_s,
        events_per_s=delivered_per_s,
    )
    row["figure"] = delivered_per_s
    summary = f"accepted {progress.accepted:,} of {s.delivered_events:,}" + (
        f" at {accepted_per_s:,.0f} events/s" if accepted_per_s else ""
    )
    if stored is not None:
        summary += f"; stored {stored:,} (the graph's head in {spec.database})"
        if stored != progress.accepted:
            notes.append(
                f"the database holds {stored:,} new events, {progress.accepted:,} accepted"
            )
    if delivered_per_s:
        summary += f"; delivered {delivered_per_s:,.0f} events/s per subscriber"
    notes.insert(0, summary)
    return [row]


def read_head(ctx: Context, spec: ServerSpec, graph_id: str) -> int | None:
    """The graph's sequence head in our app's database (None for a baseline, or on error)."""
    if spec.app != "ours" or ctx.graph_head is None:
        return None
    try:
        return ctx.graph_head(graph_id)
    except Exception as exc:
        log(f"reading the head of {graph_id} failed: {type(exc).__name__}: {exc}")
        return None


SCENARIO_FUNCTIONS = {
    "fanout": scenario_fanout,
    "spread": scenario_spread,
    "latency": scenario_latency,
    "idle": scenario_idle,
    "ingest": scenario_ingest,
    "ingest-delivered": scenario_ingest_delivered,
}

# The rows a scenario produces, when it is not simply one row named after it.
ROW_KINDS = {"ingest": ["ingest-single", "ingest-batched"]}

# Figure of each row kind: (column title, higher is better)
FIGURES = {
    "fanout": ("delivered frames/s", True),
    "spread": ("delivered frames/s", True),
    "latency": ("p99 latency ms", False),
    "idle": ("RSS KiB per connection", False),
    "ingest-single": ("events/s accepted", True),
    "ingest-batched": ("events/s accepted", True),
    "ingest-delivered": ("events/s delivered", True),
}

TITLES = {
    "fanout": "(a) fan-out",
    "spread": "(b) spread",
    "latency": "(c) latency",
    "idle": "(d) idle memory",
    "ingest-single": "(e) ingest, single",
    "ingest-batched": "(e) ingest, batched",
    "ingest-delivered": "(f) ingest, stored and delivered",
}


async def run_all(
    ctx: Context, specs: list[ServerSpec], scenarios: list[str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for scenario in scenarios:
        for spec in specs:
            left = ctx.deadline - time.monotonic()
            if left < MIN_SECONDS_LEFT:
                for kind in ROW_KINDS.get(scenario, [scenario]):
                    row = empty_row(spec, kind, "")
                    row["notes"].append("skipped: the run's time budget is spent")
                    rows.append(row)
                log(f"[{scenario}] {spec.name}: skipped (budget)")
                continue
            started = time.monotonic()
            try:
                new_rows = await asyncio.wait_for(SCENARIO_FUNCTIONS[scenario](ctx, spec), left)
            except Exception as exc:
                new_rows = []
                for kind in ROW_KINDS.get(scenario, [scenario]):
                    row = empty_row(spec, kind, "")
                    row["notes"].append(f"failed: {type(exc).__name__}: {exc}"[:800])
                    new_rows.append(row)
            for row in new_rows:
                row["wall_s"] = round(time.monotonic() - started, 1)
                log(summary_line(row))
            rows.extend(new_rows)
    return rows


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def summary_line(row: dict[str, Any]) -> str:
    title, _ = FIGURES.get(row["scenario"], ("figure", True))
    notes = "; ".join(row["notes"])[:200]
    return (
        f"[{row['scenario']}] {row['server']}: {title} {row['figure']}, "
        f"{row['delivered']}/{row['expected']} delivered, lost {row['lost']}, dup "
        f"{row['duplicated']}, ooo {row['out_of_order']}, client CPU {row['client_cpu_s']} s, "
        f"server CPU {row['server_cpu_s']} s, {row.get('wall_s')} s wall"
        + (f" | {notes}" if notes else "")
    )


# ----------------------------------------------------------------------------------------
# Reports


def add_ratios(rows: list[dict[str, Any]]) -> None:
    baseline = {row["scenario"]: row["figure"] for row in rows if row["server"] == BASELINE}
    for row in rows:
        base = baseline.get(row["scenario"])
        figure = row["figure"]
        row["ratio_vs_fastapi"] = round(figure / base, 3) if figure and base else None


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    mode = "quick (scaled-down sizes)" if meta["quick"] else "full"
    database = meta.get("database", "sqlite")
    site = (
        f"a fresh migrated PostgreSQL database ({meta.get('postgres_server', '')}, dropped "
        "afterwards)"
        if database == "postgres"
        else "a migrated SQLite site"
    )
    lines = [
        f"# Fan-out benchmark: {mode} run",
        "",
        f"- When: {meta['timestamp']}; command: `{meta['command']}`",
        f"- Machine: {meta['machine']}",
        f"- Versions: {meta['versions']}",
        f"- Client: {meta['workers']} worker processes of the {meta['client']} WebSocket client "
        "(bench/loadgen.py, uvloop, no compression offered); the publisher runs in the runner "
        "process. Client CPU: the workers' CPU seconds from the first publish to the end (for "
        "ingest, the runner's, which is the client there).",
        "- Servers: one process each, started fresh for every scenario; `daphne -v 0` and "
        "`uvicorn --no-access-log` (no access log); Redis rows use the channels_redis pub/sub "
        f"layer. Our app runs on {site} with bench/bench_settings.py: the "
        "project's settings with the per-user and per-process connection limits raised, since "
        "every subscriber is the graphs' one owner. The baselines store nothing.",
        "- Publishing: our app and the FastAPI baseline through `POST /api/executions` on a "
        "keep-alive connection; the websockets baseline through a publisher WebSocket on "
        "`/publish` (acknowledged per message), since `websockets` serves no HTTP POST. Fan-out, "
        "spread and idle publish in batches (one request in flight, so the order is defined) so "
        "that the publisher is not the bottleneck; latency publishes single events, paced; "
        "ingest-delivered publishes batches from several connections at once.",
        "- Ratios are against the FastAPI baseline of this run; for latency and memory lower is "
        "better. Latency is publish-to-receive (the send time travels in the event).",
        "",
    ]
    kinds = list(dict.fromkeys(row["scenario"] for row in rows))
    for kind in kinds:
        title, higher = FIGURES.get(kind, ("figure", True))
        group = [row for row in rows if row["scenario"] == kind]
        label = next((row["label"] for row in group if row["label"]), "")
        direction = "higher is better" if higher else "lower is better"
        heading = f"## {TITLES.get(kind, kind)}" + (f": {label}" if label else "")
        lines += [heading, "", f"Figure: {title}, {direction}.", ""]
        lines.append(
            f"| server | {title} | vs FastAPI | delivered / expected | lost | dup | out of "
            "order | frames/s | p50 ms | p99 ms | max ms | client CPU s | server CPU s | notes |"
        )
        lines.append("|" + "---|" * 14)
        for row in group:
            digits = 1 if kind in ("latency", "idle") else 0
            ratio = row.get("ratio_vs_fastapi")
            lines.append(
                "| "
                + " | ".join(
                    [
                        row["server"],
                        fmt(row["figure"], digits),
                        f"{ratio:.2f}x" if ratio is not None else "-",
                        f"{fmt(row['delivered'])} / {fmt(row['expected'])}",
                        fmt(row["lost"]),
                        fmt(row["duplicated"]),
                        fmt(row["out_of_order"]),
                        fmt(row["frames_per_s"]),
                        fmt(row["latency_p50_ms"], 2),
                        fmt(row["latency_p99_ms"], 2),
                        fmt(row["latency_max_ms"], 2),
                        fmt(row["client_cpu_s"], 2),
                        fmt(row["server_cpu_s"], 2),
                        "; ".join(row["notes"]).replace("|", "/")[:300] or "",
                    ]
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, mode: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = list(dict.fromkeys(row["server"] for row in rows))

    def value(scenario: str, server: str, key: str) -> float:
        for row in rows:
            if row["scenario"] == scenario and row["server"] == server and row[key] is not None:
                return float(row[key])
        return 0.0

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.4
    positions = list(range(len(servers)))
    tallest = 0.0
    for offset, scenario in ((-width / 2, "fanout"), (width / 2, "spread")):
        values = [value(scenario, server, "frames_per_s") for server in servers]
        tallest = max([tallest, *values])
        bars = left.bar([p + offset for p in positions], values, width, label=TITLES[scenario])
        left.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in values], fontsize=7)
    left.set_ylim(0, (tallest or 1) * 1.15)
    left.set_xticks(positions, servers, rotation=20)
    left.set_ylabel("delivered frames/s")
    left.set_title("Throughput (higher is better)")
    left.legend(loc="upper right")
    values = [value("latency", server, "latency_p99_ms") for server in servers]
    bars = right.bar(positions, values, 0.6, color="tab:red")
    right.bar_label(bars, labels=[f"{v:.1f}" if v else "" for v in values], fontsize=8)
    right.set_ylim(0, (max(values, default=0) or 1) * 1.15)
    if not any(values):
        right.text(0.5, 0.5, "not run", ha="center", transform=right.transAxes)
    right.set_xticks(positions, servers, rotation=20)
    right.set_ylabel("p99 publish-to-receive latency, ms")
    right.set_title("(c) latency p99 (lower is better)")
    figure.suptitle(f"Execution stream fan-out benchmark ({mode} run)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine() -> str:
    import psutil

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs "
        f"({model or 'unknown model'}), {memory:.0f} GiB RAM, Python {platform.python_version()}"
    )


def versions() -> str:
    names = ("django", "channels", "channels-redis", "daphne", "uvicorn", "fastapi", "websockets")
    found = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


# ----------------------------------------------------------------------------------------
# Main


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@dataclass
class PostgresSite:
    """tests/servers.py's Site on a PostgreSQL database: its environment and manage.py."""

    database_url: str
    env: dict[str, str]

    def with_redis(self, redis_url: str, layer: str) -> dict[str, str]:
        return {**self.env, "REDIS_URL": redis_url, "EXECUTIONS_REDIS_LAYER": layer}

    def manage(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        from tests.servers import run_manage

        return run_manage(self.env, *args, **kwargs)


def database_url(server_url: str, name: str) -> str:
    """`server_url` (postgres://user@host:port/anything) pointing at database `name`."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def shown_url(url: str) -> str:
    """A PostgreSQL URL without its password, for the report."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class PostgresDatabase:
    """A database created for this run on the server of `server_url`, dropped by drop()."""

    def __init__(self, server_url: str, name: str) -> None:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"unexpected database name {name!r}")
        self.server_url = server_url
        self.name = name
        self.url = database_url(server_url, name)
        self.created = False

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(
            self.server_url,
            autocommit=True,
            connect_timeout=int(POSTGRES_TIMEOUT),
            options=f"-c statement_timeout={int(POSTGRES_TIMEOUT * 1000)}",
        )

    def create(self) -> None:
        from psycopg import sql

        with self._admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self.created = True
        atexit.register(self.drop)

    def drop(self) -> None:
        """Drop the database (its servers' connections too); safe to call more than once."""
        if not self.created:
            return
        from psycopg import sql

        try:
            with self._admin() as connection:
                statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                connection.execute(statement.format(sql.Identifier(self.name)))
        except Exception as exc:
            log(f"dropping the database {self.name} failed: {type(exc).__name__}: {exc}")
            return
        self.created = False

    def head_reader(self) -> Callable[[str], int | None]:
        def head(graph_id: str) -> int | None:
            import psycopg

            with psycopg.connect(self.url, connect_timeout=int(POSTGRES_TIMEOUT)) as connection:
                found = connection.execute(GRAPH_HEAD_SQL.format("%s"), (graph_id,))
                value = found.fetchone()
            return int(value[0]) if value else 0

        return head


# The graph's sequence head: the number of events ever stored for it (GraphStream).
GRAPH_HEAD_SQL = "SELECT head FROM executions_graphstream WHERE graph_id = {}"


def sqlite_head_reader(path: Path) -> Callable[[str], int | None]:
    def head(graph_id: str) -> int | None:
        uri = f"file:{path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as connection:
            value = connection.execute(GRAPH_HEAD_SQL.format("?"), (graph_id,)).fetchone()
        return int(value[0]) if value else 0

    return head


def prepare_our_site(
    directory: Path, graph_ids: list[str], database_url: str | None = None
) -> tuple[Any, str]:
    """A migrated site whose user "bench" owns every graph; its WebSocket token.

    On a SQLite file in `directory` (tests/servers.py), or on the PostgreSQL database of
    `database_url` (created empty beforehand)."""
    from tests.servers import prepare_site, site_env

    site: Any
    if database_url is None:
        site = prepare_site(directory)
    else:
        env = site_env(directory / "unused.sqlite3")
        env["DATABASE_URL"] = database_url
        site = PostgresSite(database_url, env)
        site.manage("migrate", "--noinput", "-v", "0", timeout=MIGRATE_TIMEOUT)
    code = "\n".join(
        [
            "from django.contrib.auth import get_user_model",
            "from executions.models import Graph",
            "from executions.tokens import mint_token",
            "user = get_user_model()._default_manager.create_user(username='bench')",
            f"Graph.objects.bulk_create([Graph(id=i, owner=user) for i in {graph_ids!r}])",
            "print(mint_token(user, 7200).token)",
        ]
    )
    output = site.manage("shell", "--verbosity", "0", "-c", code).stdout.strip()
    return site, output.splitlines()[-1].strip()


INGEST_TOKEN = "bench-ingest-token-" + secrets.token_hex(16)


def server_specs(
    names: list[str], site: Any, token: str, redis_url: str
) -> tuple[list[ServerSpec], list[str]]:
    notes = []
    specs = []
    database = "postgres" if isinstance(site, PostgresSite) else "sqlite"
    plain_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in names:
        if name in ("fastapi", "websockets"):
            specs.append(ServerSpec(name, name, "in-process", plain_env))
            continue
        if name.endswith("-redis"):
            if not redis_answers(redis_url):
                notes.append(f"{name} skipped: Redis does not answer at {redis_url}")
                continue
            env = site.with_redis(redis_url, "pubsub")
            layer = "redis pubsub"
        else:
            env = dict(site.env)
            layer = "in-memory"
        env["EXECUTIONS_LOG_LEVEL"] = "WARNING"
        env["EXECUTIONS_INGEST_TOKEN"] = INGEST_TOKEN
        # The project's settings with the connection limits raised (see bench_settings.py).
        env["DJANGO_SETTINGS_MODULE"] = "bench_settings"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(BENCH), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        specs.append(
            ServerSpec(
                name,
                "ours",
                layer,
                env,
                token=token,
                ingest_token=INGEST_TOKEN,
                database=database,
            )
        )
    return specs, notes


def parse_list(text: str, known: Sequence[str], aliases: dict[str, str]) -> list[str]:
    chosen = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name = aliases.get(item, item)
        if name not in known:
            raise SystemExit(f"unknown name {item!r}; choose from {', '.join(known)}")
        chosen.append(name)
    return [name for name in known if name in chosen]


SIZE_FLAGS = {
    "ingest_concurrency": (int, "concurrent publishers of (e) ingest"),
    "ingest_seconds": (float, "seconds of each (e) ingest row"),
    "ingest_batch": (int, "events per request of (e) ingest, batched"),
    "delivered_events": (int, "events published in (f) ingest-delivered"),
    "delivered_batch": (int, "events per request of (f)"),
    "delivered_publishers": (int, "concurrent publishers of (f)"),
    "delivered_subscribers": (int, "WebSocket subscribers of (f)'s graph"),
}


def sizes_from(args: argparse.Namespace) -> Sizes:
    """The full or quick sizes, with the size flags given on the command line."""
    sizes = QUICK if args.quick else FULL
    overrides = {name: getattr(args, name) for name in SIZE_FLAGS}
    for name, value in overrides.items():
        if value is not None and value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")
    return dataclasses.replace(
        sizes, **{name: value for name, value in overrides.items() if value is not None}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fan-out benchmark of the executions app against two baselines (issue 5)."
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down sizes (smoke run)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=", ".join(SERVERS))
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="names or letters: a=fanout ... e=ingest, f=ingest-delivered",
    )
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--client", choices=("lean", "websockets"), default="lean")
    parser.add_argument(
        "--budget", type=float, default=570.0, help="seconds for the whole run (default 570)"
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument(
        "--database",
        choices=DATABASES,
        default="sqlite",
        help="our app's database: a SQLite file (default), or a fresh PostgreSQL database "
        "bench_<run id> on --postgres-url, dropped afterwards",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help=f"a PostgreSQL server and a database to connect to for CREATE/DROP DATABASE "
        f"(default $BENCH_POSTGRES_URL or {DEFAULT_POSTGRES_URL})",
    )
    for name, (kind, text) in SIZE_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=kind, help=f"{text} (overrides the sizes)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)

    began = time.monotonic()
    sizes = sizes_from(args)
    servers = parse_list(args.servers, SERVERS, {})
    scenarios = parse_list(args.scenarios, SCENARIOS, SCENARIO_LETTERS)
    run_id = secrets.token_hex(4)
    graph_count = max(sizes.spread_graphs, sizes.idle_graphs, 1)
    graph_ids = [f"bench-{run_id}-{index}" for index in range(graph_count)]
    timestamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)
    ours = any(name not in ("fastapi", "websockets") for name in servers)
    postgres = PostgresDatabase(args.postgres_url, f"bench_{run_id}")

    with tempfile.TemporaryDirectory(prefix="bench-run-") as temporary:
        directory = Path(temporary)
        site, token = (None, "")
        graph_head: Callable[[str], int | None] | None = None
        try:
            if ours and args.database == "postgres":
                log(f"creating the PostgreSQL database {postgres.name} and migrating it ...")
                try:
                    postgres.create()
                except Exception as exc:
                    where = shown_url(args.postgres_url)
                    raise SystemExit(f"cannot create a database on {where}: {exc}") from exc
                site, token = prepare_our_site(directory, graph_ids, postgres.url)
                graph_head = postgres.head_reader()
            elif ours:
                log("preparing the SQLite site of our app ...")
                site, token = prepare_our_site(directory, graph_ids)
                graph_head = sqlite_head_reader(site.database)
            specs, skipped = server_specs(servers, site, token, args.redis_url)
            for note in skipped:
                log(note)
            ctx = Context(
                sizes=sizes,
                quick=args.quick,
                workers=max(1, args.workers),
                client=args.client,
                graph_ids=graph_ids,
                log_dir=directory,
                deadline=began + args.budget,
                run_id=run_id,
                database=args.database,
                graph_head=graph_head,
            )
            factory = loadgen.new_event_loop_factory()
            try:
                rows = asyncio.run(run_all(ctx, specs, scenarios), loop_factory=factory)
            finally:
                _kill_leftovers()
        finally:
            postgres.drop()

    add_ratios(rows)
    meta = {
        "timestamp": timestamp,
        "quick": args.quick,
        "command": " ".join(["python", "bench/run.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "versions": versions(),
        "workers": ctx.workers,
        "client": ctx.client,
        "database": args.database,
        "postgres_server": shown_url(args.postgres_url) if args.database == "postgres" else None,
        "sizes": asdict(sizes),
        "run_seconds": round(time.monotonic() - began, 1),
        "skipped": skipped,
    }
    suffix = ("-postgres" if args.database == "postgres" else "") + ("-quick" if args.quick else "")
    with (args.results / f"{timestamp}{suffix}.jsonl").open("w") as out:
        out.write(json.dumps({"meta": meta}) + "\n")
        for row in rows:
            out.write(json.dumps({**row, "run": timestamp, "quick": args.quick}) + "\n")
    table = markdown(rows, meta)
    table += f"\nWhole run: {meta['run_seconds']} s.\n"
    if skipped:
        table += "".join(f"\n- {note}" for note in skipped) + "\n"
    latest = "latest-postgres" if args.database == "postgres" else "latest"
    (args.results / f"{latest}.md").write_text(table)
    plot(rows, args.results / f"{latest}.png", "quick" if args.quick else "full")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
