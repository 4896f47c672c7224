"""Many sockets on one or several server processes: the machinery of bench/sockets.py and
bench/scale_out.py.

One measurement (``measure``) starts P serving processes of one server spec (bench/run.py's
``ServerSpec``: our app under daphne or uvicorn on a given layer, or the FastAPI baseline),
optionally one more process of our app that only ingests (no subscriber connects to it), opens
N WebSocket subscribers spread evenly over the serving processes from loadgen worker processes
(several per server, from several 127.0.0.x source addresses), all subscribed to one graph, and
then measures, in order:

1. connect: the whole connect phase (the slowest worker's, from its first connect to its last
   subscribe ack) and each connection's own time (TCP connect to subscribe ack): p50, p99, max;
2. idle memory: the serving processes' RSS after connecting and a settle second, minus before
   (after the server's warm-up), divided by the connections;
3. idle CPU: the serving processes' CPU seconds (``/proc/<pid>/stat``) over an idle window;
4. fan-out: E events published (``POST /api/executions``, one request in flight, in batches or
   paced) to the first serving process or to the ingest process; every client counts what it
   received (lost, duplicated, out of order), the publish-to-receive latency of every frame,
   the delivered frames/s, and each process's CPU seconds over the window from the first
   publish until every worker reported (``/proc/<pid>/stat``), with Redis's own CPU seconds
   (``INFO cpu``) when the layer is Redis.

The open-file limit is raised with ``resource.setrlimit`` in this process before anything starts
(servers and workers inherit it), and again by each worker; each row records the limit every
server and worker process ran with, read back from ``/proc/<pid>/limits``.

Every wait is bounded: server start (bench/run.py's 30 s), the connect phase (twice the connect
timeout), publishing and delivery (the deadline, or ``stall`` seconds without progress), worker
exit; the callers bound each row and the whole run with a budget too.
"""

import argparse
import asyncio
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import run  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FD_MARGIN = 4096  # files a server or worker holds besides its sockets (modules, pipes, DB)
SETTLE_SECONDS = run.SETTLE_SECONDS
DAPHNE_BACKLOG = 50  # Twisted's listen backlog, which daphne keeps


@dataclass(frozen=True)
class Load:
    """The scale of one measurement; the same code runs a full run and a smoke run."""

    connections: int  # over all serving processes
    events: int
    batch: int = 1  # events per publish request (one request in flight)
    rate: float = 0.0  # events/s, single-event requests on a fixed schedule; 0: as fast as possible
    idle_seconds: float = 10.0
    workers: int = 4  # loadgen processes in all (at least one per serving process)
    concurrency: int = 40  # connects in flight, over all workers
    source_addresses: int = 4  # 127.0.0.1 .. 127.0.0.N
    connect_timeout: float = 120.0  # per connection; the connect phase gets twice this
    deadline: float = 180.0  # publishing and delivery
    stall: float = 10.0  # nothing arrived for this long: the rest counts as lost


# ----------------------------------------------------------------------------------------
# Processes


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # After the command: state is field 3, utime field 14 and stime field 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_open_file_limit(pid: int) -> str | None:
    """The soft open-file limit a process runs with, from /proc/<pid>/limits."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return line.split()[3]
    except OSError:
        pass
    return None


def redis_cpu_seconds(url: str) -> float | None:
    """Redis's own CPU seconds so far (``INFO cpu``: used_cpu_user + used_cpu_sys)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        info = client.info("cpu")
        client.close()
    except redis.RedisError:
        return None
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def pid_of(server: run.Server) -> int:
    assert server.process is not None
    return server.process.pid


def source_addresses(count: int) -> list[str]:
    """127.0.0.1 .. 127.0.0.N: loopback addresses Linux answers on without configuration."""
    return [f"127.0.0.{index}" for index in range(1, max(1, min(count, 254)) + 1)]


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def percentiles_ms(values_us: list[int]) -> tuple[float | None, float | None, float | None]:
    if not values_us:
        return None, None, None
    ordered = sorted(values_us)
    return (
        round(run.percentile(ordered, 0.50) / 1000, 2),
        round(run.percentile(ordered, 0.99) / 1000, 2),
        round(ordered[-1] / 1000, 2),
    )


async def start_servers(specs: list[run.ServerSpec], ctx: run.Context) -> list[run.Server]:
    """Start and warm every server at once; stop them all if any fails."""
    outcomes = await asyncio.gather(
        *(run.start_server(spec, ctx) for spec in specs), return_exceptions=True
    )
    servers = [outcome for outcome in outcomes if isinstance(outcome, run.Server)]
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        for server in servers:
            server.stop()
        raise failures[0]
    return servers


# ----------------------------------------------------------------------------------------
# One measurement


def new_row(spec: run.ServerSpec, scenario: str, name: str, label: str) -> dict[str, Any]:
    row = run.empty_row(spec, scenario, label)
    row["server"] = name
    row.update(
        processes=0,
        ingest="",
        connect_p50_ms=None,
        connect_p99_ms=None,
        connect_max_ms=None,
        connects_per_s=None,
        idle_seconds=None,
        idle_cpu_percent=None,
        redis_cpu_s=None,
        publish_window_s=None,
        cpu_us_per_frame=None,
        open_file_limits={},
        per_process=[],
    )
    return row


async def measure(
    ctx: run.Context,
    spec: run.ServerSpec,
    *,
    scenario: str,
    name: str,
    processes: int,
    separate_ingest: bool,
    load: Load,
    redis_url: str,
) -> dict[str, Any]:
    """Start the processes, open the sockets, measure; one row (see the module docstring)."""
    graph_id = ctx.graph_ids[0]
    plan = [0] * load.events  # every event to the one graph every connection follows
    shares = split_evenly(load.connections, processes)
    ingest = "separate process" if separate_ingest else "first serving process"
    label = (
        f"{load.connections:,} connections on {processes} process"
        f"{'es' if processes > 1 else ''} ({spec.layer}), {load.events} events "
        + (f"paced at {load.rate:g}/s" if load.rate else f"in batches of {load.batch}")
        + f", published to the {ingest}"
    )
    row = new_row(spec, scenario, name, label)
    row.update(
        processes=processes,
        ingest=ingest,
        subscribers=load.connections,
        events=load.events,
        expected=load.connections * load.events,
        idle_seconds=load.idle_seconds,
    )
    notes: list[str] = row["notes"]
    loadgen.raise_open_file_limit(max(shares) + FD_MARGIN)

    servers = await start_servers([spec] * (processes + (1 if separate_ingest else 0)), ctx)
    serving = servers[:processes]
    target = servers[-1] if separate_ingest else servers[0]
    pool: run.WorkerPool | None = None
    try:
        # Workers: at least one per serving process, each serving one process's share.
        per_server = max(1, round(load.workers / processes))
        worker_count = per_server * processes
        addresses = source_addresses(load.source_addresses)
        worker_specs: list[dict[str, Any]] = []
        owners: list[int] = []
        for index, (server, share) in enumerate(zip(serving, shares, strict=True)):
            for count in split_evenly(share, per_server):
                worker_specs.append(
                    {
                        "url": server.ws_url,
                        "subscriptions": [(graph_id, 0)] * count,
                        "plan": plan,
                        "graphs": 1,
                        "concurrency": max(1, load.concurrency // worker_count),
                        "connect_timeout": load.connect_timeout,
                        "go_timeout": 2 * load.connect_timeout + load.idle_seconds + 60,
                        "client": ctx.client,
                        "local_addrs": addresses,
                        "nofile": count + FD_MARGIN,
                    }
                )
                owners.append(index)
        rss_before = [server.rss() for server in serving]

        pool = run.WorkerPool(worker_specs)
        ready = await pool.collect("ready", 2 * load.connect_timeout + 30)
        connected = failed = 0
        connect_s = 0.0
        connect_us: list[int] = []
        connected_per_server = [0] * processes
        for owner, (kind, payload) in zip(owners, ready, strict=True):
            if kind != "ready":
                notes.append(f"worker: {payload}")
                continue
            connected += payload["connected"]
            connected_per_server[owner] += payload["connected"]
            failed += payload["failed"]
            connect_s = max(connect_s, payload["connect_s"])
            connect_us.extend(payload["connect_us"])
            notes.extend(f"connect: {error}" for error in payload["errors"][:2])
        p50, p99, top = percentiles_ms(connect_us)
        row.update(
            connected=connected,
            connect_s=round(connect_s, 2),
            connects_per_s=round(connected / connect_s, 1) if connect_s else None,
            connect_p50_ms=p50,
            connect_p99_ms=p99,
            connect_max_ms=top,
        )
        if failed:
            notes.insert(0, f"{failed} of {load.connections} connections failed")
        limits = {f"server {pid_of(s)}": proc_open_file_limit(pid_of(s)) for s in servers}
        for process in pool.processes:
            limits[f"worker {process.pid}"] = proc_open_file_limit(process.pid)
        row["open_file_limits"] = limits

        # Idle: memory after a settle second, then CPU over the idle window.
        await asyncio.sleep(SETTLE_SECONDS)
        rss_after = [server.rss() for server in serving]
        row.update(rss_before=sum(rss_before), rss_after=sum(rss_after))
        if connected:
            row["rss_per_connection_kib"] = round(
                (sum(rss_after) - sum(rss_before)) / connected / 1024, 1
            )
        idle_start = [proc_cpu_seconds(pid_of(server)) for server in serving]
        idle_began = time.monotonic()
        await asyncio.sleep(load.idle_seconds)
        idle_wall = time.monotonic() - idle_began
        idle_end = [proc_cpu_seconds(pid_of(server)) for server in serving]
        idle_cpu = [
            (end - start) if start is not None and end is not None else None
            for start, end in zip(idle_start, idle_end, strict=True)
        ]
        if all(value is not None for value in idle_cpu):
            total = sum(value for value in idle_cpu if value is not None)
            row["idle_server_cpu_s"] = round(total, 3)
            row["idle_cpu_percent"] = round(100 * total / idle_wall, 2) if idle_wall else None

        # Fan-out.
        pids = [pid_of(server) for server in servers]
        cpu_before = [proc_cpu_seconds(pid) for pid in pids]
        redis_before = redis_cpu_seconds(redis_url) if "redis" in spec.layer else None
        publisher_cpu = time.process_time()
        pool.send_all(
            ("go", {"stall": load.stall, "deadline": load.deadline, "grace": run.GRACE_SECONDS})
        )
        started_ns = time.time_ns()
        window_began = time.monotonic()
        publisher = run.make_publisher(target)
        try:
            if load.rate:
                publishing = run.publish_paced(publisher, [graph_id], plan, load.rate)
            else:
                publishing = run.publish_batched(publisher, [graph_id], plan, load.batch)
            row["published"] = await asyncio.wait_for(publishing, load.deadline)
        except TimeoutError:
            notes.append(f"publishing did not finish within the {load.deadline:g} s deadline")
        except (run.PublishError, OSError) as exc:
            notes.append(f"publish failed: {type(exc).__name__}: {exc}"[:300])
        finally:
            await publisher.close()
        row["publisher_cpu_s"] = round(time.process_time() - publisher_cpu, 3)
        results = await pool.collect("result", load.deadline + load.stall + 15)
        cpu_after = [proc_cpu_seconds(pid) for pid in pids]
        window = time.monotonic() - window_began
        redis_after = redis_cpu_seconds(redis_url) if redis_before is not None else None
        row["publish_window_s"] = round(window, 3)
        if redis_before is not None and redis_after is not None:
            row["redis_cpu_s"] = round(redis_after - redis_before, 3)
        run.fill_delivery(row, results, started_ns, load.deadline, load.stall)
        for server in servers:
            if not server.alive():
                notes.append(f"{server.spec.name} exited: {server.output()[-300:]}")

        # Per process: its connections, the frames they received, its CPU in the window.
        delivered_per_server = [0] * processes
        for owner, (kind, result) in zip(owners, results, strict=True):
            if kind == "result":
                delivered_per_server[owner] += result["delivered"]
        per_process = []
        for index, server in enumerate(servers):
            before, after = cpu_before[index], cpu_after[index]
            cpu = round(after - before, 3) if before is not None and after is not None else None
            serves = index < processes
            frames = delivered_per_server[index] if serves else 0
            per_process.append(
                {
                    "pid": pid_of(server),
                    "role": "serve" if serves else "ingest",
                    "ingests": server is target,
                    "connections": connected_per_server[index] if serves else 0,
                    "frames": frames,
                    "events": row["published"],
                    "cpu_s": cpu,
                    "cpu_us_per_frame": round(cpu / frames * 1e6, 2) if cpu and frames else None,
                    "rss_before": rss_before[index] if serves else None,
                    "rss_after": rss_after[index] if serves else None,
                    "idle_cpu_s": round(idle_cpu[index], 3)
                    if serves and idle_cpu[index] is not None
                    else None,
                }
            )
        row["per_process"] = per_process
        cpus = [entry["cpu_s"] for entry in per_process]
        if all(cpu is not None for cpu in cpus):
            row["server_cpu_s"] = round(sum(cpu for cpu in cpus if cpu is not None), 3)
            if row["delivered"]:
                row["cpu_us_per_frame"] = round(row["server_cpu_s"] / row["delivered"] * 1e6, 2)
    finally:
        if pool is not None:
            await pool.close()
        for server in servers:
            server.stop()
    return row


# ----------------------------------------------------------------------------------------
# Helpers of the two command lines


def load_from(args: argparse.Namespace, base: Load) -> Load:
    overrides = {
        key: getattr(args, key) for key in asdict(base) if getattr(args, key, None) is not None
    }
    return Load(**{**asdict(base), **overrides})


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """The scale options both scripts share; unset ones come from the full or smoke preset."""
    add = parser.add_argument
    add("--connections", type=int, help="subscribers in all, split evenly over the processes")
    add("--events", type=int, help="events published to the one graph")
    add("--batch", type=int, help="events per publish request")
    add("--rate", type=float, help="publish single events at this rate/s (0: as fast as possible)")
    add("--idle-seconds", dest="idle_seconds", type=float, help="idle window for memory and CPU")
    add("--workers", type=int, help="loadgen processes in all (at least one per server)")
    add("--concurrency", type=int, help="connects in flight over all workers (daphne: <= 50)")
    add(
        "--source-addresses",
        dest="source_addresses",
        type=int,
        help="connect from 127.0.0.1..127.0.0.N",
    )
    add("--connect-timeout", dest="connect_timeout", type=float, help="seconds per connection")
    add("--deadline", type=float, help="seconds for publishing and delivery")
    add("--stall", type=float, help="seconds without a frame before the rest counts as lost")


def new_context(
    workers: int, graph_ids: list[str], directory: Path, deadline: float, run_id: str
) -> run.Context:
    return run.Context(
        sizes=run.FULL,
        quick=False,
        workers=workers,
        client="lean",
        graph_ids=graph_ids,
        log_dir=directory,
        deadline=deadline,
        run_id=run_id,
    )


def parse_ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(value < 1 for value in values):
        raise SystemExit(f"expected positive integers separated by commas, got {text!r}")
    return values


def fmt(value: Any, digits: int = 0) -> str:
    return run.fmt(value, digits)


def mib(value: int | None) -> str:
    return "-" if not value else f"{value / 2**20:,.1f}"


def ceil_div(total: int, parts: int) -> int:
    return math.ceil(total / parts)


def spec_for(
    kind: str, redis: bool, site: Any, token: str, redis_url: str
) -> tuple[run.ServerSpec | None, list[str]]:
    """bench/run.py's spec of one server kind ("fastapi", "daphne", "uvicorn") on a layer."""
    name = kind if kind == "fastapi" else f"{kind}-redis" if redis else kind
    specs, skipped = run.server_specs([name], site, token, redis_url)
    return (specs[0] if specs else None), skipped


def read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def preflight(per_process: int, load: Load) -> list[str]:
    """What the host allows for `per_process` connections to one server process; warnings first.

    Raises this process's open-file limit (inherited by servers and workers) as a side effect.
    """
    import resource

    wanted = per_process + FD_MARGIN
    soft, hard = loadgen.raise_open_file_limit(wanted)
    notes = []
    if soft != resource.RLIM_INFINITY and soft < per_process + 64:
        notes.append(
            f"WARNING: open-file limit {soft} (hard {hard}) is below {per_process:,} sockets "
            "per server process; raise the hard limit (ulimit -Hn, limits.conf) or run as root"
        )
    notes.append(f"open-file limit of this run: soft {soft}, hard {hard} (wanted {wanted:,})")
    ports = read_sysctl("net.ipv4.ip_local_port_range")
    if ports:
        low, high = (int(part) for part in ports.split())
        addresses = max(1, min(load.source_addresses, 254))
        # One server port: each source address has the range's ports towards it.
        room = (high - low + 1) * addresses
        severity = "WARNING: " if room < per_process else ""
        notes.append(
            f"{severity}ephemeral ports {low}-{high} x {addresses} source address"
            f"{'es' if addresses > 1 else ''} = {room:,} connections per server port"
        )
    if load.concurrency > DAPHNE_BACKLOG:
        notes.append(
            f"WARNING: {load.concurrency} connects in flight exceed daphne's listen backlog "
            f"({DAPHNE_BACKLOG}): dropped SYNs are retried after 1 s and show in connect p99"
        )
    for name in ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "fs.file-max"):
        value = read_sysctl(name)
        if value is not None:
            notes.append(f"{name} = {value}")
    return sorted(notes, key=lambda note: not note.startswith("WARNING"))


def describe_limits(rows: Sequence[dict[str, Any]]) -> str:
    seen = sorted({value or "?" for row in rows for value in row["open_file_limits"].values()})
    return ", ".join(seen) or "-"
