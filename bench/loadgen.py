"""Load generator: real WebSocket subscribers spread over worker processes.

Each worker process opens its share of connections, subscribes each one to its graph, waits for
the server's ack, then counts every ``execution_event`` frame it receives until every
connection has all the events it expects, or nothing arrives for ``stall`` seconds, or a
deadline passes. It reports, for its connections together: delivered frames, expected, unique,
duplicated, out of order, foreign (an event of another graph), publish-to-receive latencies and
its own CPU seconds, so a reader can tell whether the client was the bottleneck.

The publisher numbers events ``0..N-1`` in ``node_exec_id`` and puts its send time
(``time.time_ns()``) in ``input_data.bench_t``; the ``plan`` says which graph each event goes
to, so a worker knows what each connection must receive and in which order.

Two clients:

* ``lean`` (the default): a minimal RFC 6455 client on an ``asyncio.Protocol`` (uvloop when
  installed). It offers no extension (no compression), answers pings, and reads the event
  number and send time straight out of the receive buffer with ``bytes.find``, without decoding
  the frame. On a 2-core machine the client shares the CPU with the server, so every
  microsecond it spends per frame is taken from the server being measured; this client costs
  a fraction of the ``websockets`` one per frame (compare ``--client websockets``).
* ``websockets``: the ``websockets`` asyncio client (compression off), one task per connection,
  the same accounting; slower per frame, kept to cross-check the lean client's counts.

Workers talk to the parent over a ``multiprocessing`` pipe:
``("ready", stats)`` -> ``("go", {...})`` -> ``("result", stats)``; the parent may send
``("stop", None)`` at any time.

Optional spec keys (bench/sockets.py and bench/scale_out.py use the first two):
``local_addrs``, source addresses (e.g. ``127.0.0.2``) given to the connections in turn, so
that many thousands of connections are not limited by one address's ephemeral ports;
``nofile``, the open-file limit the worker raises itself to; and ``streams`` (bench/run.py's
``ingest-delivered``), the number of publishers that publish at once, publisher ``p`` sending
the ``p``-th of that many equal contiguous ranges of event numbers in order: the order is then
checked within each range, since the order across concurrent publishers is not defined. The
ready message carries each connection's connect time (TCP connect to subscribe ack,
microseconds) in ``connect_us``.
"""

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
import socket
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

EVENT_MARK = b'"node_exec_id":"'
TIME_MARK = b'"bench_t":'
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10

PIPE_POLL_SECONDS = 0.02
WATCH_SECONDS = 0.05
MAX_ERRORS_KEPT = 5
# Linux: bind() to a source address without reserving a port until connect(), so the port is
# picked per destination (the 4-tuple), not out of the address's ports for every destination.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def raise_open_file_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to `wanted` (and the hard limit when allowed).

    The limit is inherited by processes started afterwards (servers and workers alike).
    Returns the (soft, hard) limit in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard != resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):  # raising the hard limit needs root
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def new_event_loop_factory() -> Any:
    """uvloop's loop factory when installed (as under uvicorn), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def stream_size(events: int, streams: int) -> int:
    """Event numbers per publisher when `streams` publishers split ``0..events-1`` evenly."""
    return max(1, -(-events // max(1, streams)))


def expected_per_graph(plan: Sequence[int], graphs: int) -> list[int]:
    counts = [0] * graphs
    for graph_index in plan:
        counts[graph_index] += 1
    return counts


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked frame from the client, as RFC 6455 requires."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    keystream = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(
        size, "big"
    )
    return header + mask + masked


class WorkerState:
    """What every connection of one worker shares: the plan and the running totals."""

    def __init__(self, plan: Sequence[int], streams: int = 1) -> None:
        self.plan = bytes(plan) if max(plan, default=0) < 256 else list(plan)
        self.streams = max(1, streams)
        self.stream_size = stream_size(len(plan), self.streams)
        self.remaining = 0  # unique frames still expected over the connected subscribers
        self.first_rx = 0
        self.last_rx = 0
        self.latencies_us: list[int] = []
        self.errors: list[str] = []
        self.closed_by_server = 0

    def error(self, text: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(text)


class Tally:
    """What one subscriber received, checked against the plan."""

    __slots__ = (
        "delivered",
        "duplicated",
        "foreign",
        "graph_index",
        "last_seqs",
        "out_of_order",
        "seen",
        "state",
        "unique",
    )

    def __init__(self, state: WorkerState, graph_index: int) -> None:
        self.state = state
        self.graph_index = graph_index
        self.seen = bytearray(len(state.plan))
        self.delivered = 0
        self.unique = 0
        self.duplicated = 0
        self.out_of_order = 0
        self.foreign = 0
        self.last_seqs = [-1] * state.streams  # the last number seen of each publisher's range

    def event(self, buf: bytes | bytearray, start: int, end: int) -> bool:
        """Count the text frame ``buf[start:end]`` if it is an execution event."""
        i = buf.find(EVENT_MARK, start, end)
        if i < 0:
            return False
        now = time.time_ns()
        i += len(EVENT_MARK)
        j = buf.find(b'"', i, end)
        seq = int(buf[i:j])
        state = self.state
        if not state.first_rx:
            state.first_rx = now
        state.last_rx = now
        self.delivered += 1
        k = buf.find(TIME_MARK, j, end)
        if k >= 0:
            k += len(TIME_MARK)
            state.latencies_us.append((now - int(buf[k : buf.find(b"}", k, end)])) // 1000)
        plan = state.plan
        if seq < 0 or seq >= len(plan) or plan[seq] != self.graph_index:
            self.foreign += 1
            return True
        if self.seen[seq]:
            self.duplicated += 1
            return True
        self.seen[seq] = 1
        self.unique += 1
        state.remaining -= 1
        stream = seq // state.stream_size
        if seq < self.last_seqs[stream]:
            self.out_of_order += 1
        else:
            self.last_seqs[stream] = seq
        return True


def handle_reply(text: bytes | bytearray, graph_id: str, subscribed: asyncio.Future[None]) -> None:
    """A frame that is not an event: the subscribe ack, or an error that fails the subscribe."""
    try:
        message = json.loads(text)
    except ValueError:
        if not subscribed.done():
            subscribed.set_exception(ConnectionError(f"non-JSON frame {bytes(text[:80])!r}"))
        return
    if subscribed.done():
        return
    if message.get("method") == "subscribe" and message.get("channel") == graph_id:
        if message.get("success"):
            subscribed.set_result(None)
        else:
            subscribed.set_exception(ConnectionError(f"subscribe refused: {message}"))
    elif message.get("method") == "error":
        subscribed.set_exception(ConnectionError(f"error frame: {message.get('error')}"))


class LeanSubscriber(asyncio.Protocol):
    """A minimal WebSocket client connection that subscribes to one graph and tallies events."""

    def __init__(self, host: str, target: str, graph_id: str, tally: Tally) -> None:
        loop = asyncio.get_running_loop()
        self.host = host
        self.target = target
        self.graph_id = graph_id
        self.tally = tally
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.fragments: bytearray | None = None
        self.closing = False
        self.key = base64.b64encode(os.urandom(16))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(
            b"GET " + self.target.encode() + b" HTTP/1.1\r\n"
            b"Host: " + self.host.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + self.key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"connection lost: {exc}"))
        elif not self.closing:
            self.tally.state.closed_by_server += 1
            self.tally.state.error(f"{self.graph_id}: connection lost ({exc})")

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self._check_handshake(bytes(buf[:end]))
            del buf[: end + 4]
            if not self.upgraded:
                return
        self._read_frames()

    def _check_handshake(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest())
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if not lines[0].startswith(b"HTTP/1.1 101") or headers.get(b"sec-websocket-accept") != (
            accept
        ):
            self.subscribed.set_exception(ConnectionError(f"handshake refused: {lines[0]!r}"))
            self.abort()
            return
        self.upgraded = True
        request = {"method": "subscribe", "data": {"graph_id": self.graph_id}}
        self.send(OP_TEXT, json.dumps(request).encode())

    def _read_frames(self) -> None:
        buf = self.buf
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            second = buf[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if second & 0x80:
                self.tally.state.error(f"{self.graph_id}: masked frame from the server")
                self.abort()
                return
            end = start + length
            if end > size:
                break
            first = buf[pos]
            pos = end
            opcode = first & 0x0F
            final = first & 0x80
            if opcode == OP_TEXT and final:
                if not self.tally.event(buf, start, end):
                    handle_reply(buf[start:end], self.graph_id, self.subscribed)
            elif opcode in (OP_TEXT, OP_BINARY) or opcode == OP_CONTINUATION:
                self._fragment(opcode, final, buf[start:end])
            elif opcode == OP_PING:
                self.send(OP_PONG, bytes(buf[start:end]))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(buf[start : start + 2], "big") if length >= 2 else 1005
                if not self.closing:
                    self.tally.state.error(f"{self.graph_id}: closed by the server ({code})")
                self.close()
                break
        if pos:
            del buf[:pos]

    def _fragment(self, opcode: int, final: int, payload: bytearray) -> None:
        if opcode == OP_BINARY:
            self.tally.state.error(f"{self.graph_id}: binary frame")
            return
        if opcode == OP_TEXT:
            self.fragments = bytearray(payload)
        elif self.fragments is not None:
            self.fragments += payload
        if final and self.fragments is not None:
            whole, self.fragments = self.fragments, None
            if not self.tally.event(whole, 0, len(whole)):
                handle_reply(whole, self.graph_id, self.subscribed)

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.send(OP_CLOSE, (1000).to_bytes(2, "big"))
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


async def bound_socket(host: str, port: int, local_addr: str) -> socket.socket:
    """A TCP socket from source address `local_addr`, connected to host:port."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((local_addr, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def open_lean(
    url: str, graph_id: str, tally: Tally, limit: float, local_addr: str | None = None
) -> LeanSubscriber:
    """Connect, upgrade and subscribe one lean subscriber; fail within `limit` seconds.

    With `local_addr`, the connection leaves from that source address (e.g. ``127.0.0.2``).
    """
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc
    loop = asyncio.get_running_loop()
    protocol: LeanSubscriber | None = None

    def factory() -> LeanSubscriber:
        nonlocal protocol
        protocol = LeanSubscriber(host, target, graph_id, tally)
        return protocol

    async def connect() -> None:
        if local_addr:
            sock = await bound_socket(parts.hostname or "", parts.port or 80, local_addr)
            await loop.create_connection(factory, sock=sock)
        else:
            await loop.create_connection(factory, parts.hostname, parts.port)
        assert protocol is not None
        await protocol.subscribed

    try:
        await asyncio.wait_for(connect(), limit)
    except BaseException:
        if protocol is not None:
            protocol.abort()
        raise
    assert protocol is not None
    return protocol


class LibrarySubscriber:
    """The same subscriber on the ``websockets`` asyncio client, one reader task each."""

    def __init__(self, graph_id: str, tally: Tally) -> None:
        self.graph_id = graph_id
        self.tally = tally
        self.connection: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.closing = False

    async def open(self, url: str, limit: float, local_addr: str | None = None) -> None:
        from websockets.asyncio.client import connect

        source = {"local_addr": (local_addr, 0)} if local_addr else {}

        async def run() -> None:
            self.connection = await connect(
                url,
                compression=None,
                max_size=None,
                ping_interval=None,
                open_timeout=limit,
                **source,
            )
            request = {"method": "subscribe", "data": {"graph_id": self.graph_id}}
            await self.connection.send(json.dumps(request))
            subscribed = asyncio.get_running_loop().create_future()
            while not subscribed.done():
                handle_reply(await self.connection.recv(decode=False), self.graph_id, subscribed)
            await subscribed

        try:
            await asyncio.wait_for(run(), limit)
        except BaseException:
            if self.connection is not None:
                self.connection.transport.abort()
            raise
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        tally = self.tally
        try:
            async for message in self.connection:
                data = message.encode() if isinstance(message, str) else message
                tally.event(data, 0, len(data))
        except Exception as exc:
            tally.state.error(f"{self.graph_id}: {exc!r}")
        if not self.closing:
            tally.state.closed_by_server += 1

    def close(self) -> None:
        self.closing = True
        if self.reader is not None:
            self.reader.cancel()
        if self.connection is not None:
            self.connection.transport.close()


async def _recv(pipe: Connection, seconds: float) -> tuple[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pipe.poll():
            return pipe.recv()
        await asyncio.sleep(PIPE_POLL_SECONDS)
    return ("timeout", None)


async def run_worker(spec: dict[str, Any], pipe: Connection) -> None:
    """One worker: connect, report ready, wait for go, tally until done, report the result."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    if spec.get("nofile"):
        nofile = raise_open_file_limit(spec["nofile"])
    local_addrs: list[str] = list(spec.get("local_addrs") or [])
    state = WorkerState(spec["plan"], spec.get("streams", 1))
    per_graph = expected_per_graph(spec["plan"], spec["graphs"])
    subscriptions: list[tuple[str, int]] = spec["subscriptions"]
    tallies = [Tally(state, graph_index) for _, graph_index in subscriptions]
    expected = sum(per_graph[graph_index] for _, graph_index in subscriptions)
    gate = asyncio.Semaphore(spec["concurrency"])
    timeout = spec["connect_timeout"]
    opened: list[Any] = []
    failures: list[str] = []
    connect_us: list[int] = []  # per connection: TCP connect to subscribe ack
    cpu_start = time.process_time()
    connect_started = time.monotonic()

    async def open_one(index: int, graph_id: str, tally: Tally) -> None:
        local = local_addrs[index % len(local_addrs)] if local_addrs else None
        async with gate:
            began = time.monotonic_ns()
            try:
                if spec["client"] == "websockets":
                    subscriber = LibrarySubscriber(graph_id, tally)
                    await subscriber.open(spec["url"], timeout, local)
                else:
                    subscriber = await open_lean(spec["url"], graph_id, tally, timeout, local)
            except (OSError, ConnectionError, TimeoutError, Exception) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            connect_us.append((time.monotonic_ns() - began) // 1000)
            opened.append(subscriber)
            state.remaining += per_graph[tally.graph_index]

    tasks = [
        asyncio.ensure_future(open_one(index, graph_id, tally))
        for index, ((graph_id, _), tally) in enumerate(zip(subscriptions, tallies, strict=True))
    ]
    _, pending = await asyncio.wait(tasks, timeout=timeout * 2) if tasks else (set(), set())
    for task in pending:
        task.cancel()
        failures.append("connect timed out")
    connect_seconds = time.monotonic() - connect_started
    cpu_connected = time.process_time()
    pipe.send(
        (
            "ready",
            {
                "connected": len(opened),
                "failed": len(failures),
                "connect_s": connect_seconds,
                "connect_us": connect_us,
                "nofile": list(nofile),
                "errors": failures[:MAX_ERRORS_KEPT],
            },
        )
    )

    kind, go = await _recv(pipe, spec["go_timeout"])
    stalled = timed_out = stopped = False
    cpu_go = time.process_time()
    if kind == "go":
        started = time.monotonic()
        last_progress = started
        last_count = -1
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            now = time.monotonic()
            if state.remaining <= 0:
                await asyncio.sleep(go["grace"])
                break
            count = state.last_rx
            if count != last_count:
                last_count, last_progress = count, now
            if now - last_progress > go["stall"]:
                stalled = True
                break
            if now - started > go["deadline"]:
                timed_out = True
                break
            if pipe.poll():
                pipe.recv()
                stopped = True
                break
    cpu_done = time.process_time()
    result = {
        "connected": len(opened),
        "failed": len(failures),
        "expected": expected,
        "delivered": sum(t.delivered for t in tallies),
        "unique": sum(t.unique for t in tallies),
        "duplicated": sum(t.duplicated for t in tallies),
        "out_of_order": sum(t.out_of_order for t in tallies),
        "foreign": sum(t.foreign for t in tallies),
        "first_rx_ns": state.first_rx,
        "last_rx_ns": state.last_rx,
        "latencies_us": state.latencies_us,
        "cpu_connect_s": cpu_connected - cpu_start,
        "cpu_s": cpu_done - cpu_go,
        "stalled": stalled,
        "timed_out": timed_out,
        "stopped": stopped or kind != "go",
        "closed_by_server": state.closed_by_server,
        "errors": state.errors,
    }
    pipe.send(("result", result))
    for subscriber in opened:
        subscriber.close()
    await asyncio.sleep(0.1)


def worker_main(spec: dict[str, Any], pipe: Connection) -> None:
    """Process entry point; any failure is reported to the parent instead of a result."""
    try:
        factory = new_event_loop_factory()
        asyncio.run(run_worker(spec, pipe), loop_factory=factory)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        pipe.close()
