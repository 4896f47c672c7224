"""Ten thousand sockets: one server process holding 10,000 WebSocket subscribers, our app under
daphne beside the FastAPI baseline, then two processes of our app behind Redis, 5,000 each.

Each row (``--rows``) starts its server processes fresh, connects ``--connections`` subscribers
of one graph from ``--workers`` loadgen processes (bench/loadgen.py's lean client, from
``--source-addresses`` loopback addresses 127.0.0.1..N) and measures (bench/cluster.py):

* connect time: the whole connect phase, connects/s, and each connection's own time (TCP
  connect to the subscribe ack) at p50, p99 and max;
* idle memory per connection: the server processes' RSS after connecting minus before, divided
  by the connections, and its ratio to the FastAPI baseline's;
* idle CPU: the server processes' CPU seconds over ``--idle-seconds`` with every socket open;
* fan-out: ``--events`` events to all of them (single-event requests, one in flight, by
  default): delivered / expected, lost, duplicated, out of order (every client counts what it
  received), delivered frames/s, publish-to-receive p50 / p99 / max, and server CPU seconds.

Rows: ``fastapi`` (bench/baselines/fastapi_server.py), ``daphne`` and ``uvicorn`` (our app on the
in-memory layer), with ``-redis`` on the channels_redis pub/sub layer (``--redis-url``, else
REDIS_URL) and ``-xN`` on N processes sharing Redis, the connections split evenly and the events
published to the first process (``--ingest separate``: to one more process of our app that
holds no subscriber). Default rows: ``fastapi,daphne,daphne-redis-x2``.

    .venv/bin/python bench/sockets.py            # full: 10,000 connections, 100 events per row
    .venv/bin/python bench/sockets.py --smoke    # 300 connections, 20 events, short idle
    .venv/bin/python bench/sockets.py --connections 2000 --rows daphne,daphne-redis-x2

The open-file limit is raised with resource.setrlimit before any process starts (the servers
and workers inherit it, and each worker raises its own); a pre-flight lists the limit, the
ephemeral port range and the listen backlogs, and warns when they cannot hold the connections.

Writes bench/results/sockets-<timestamp>.jsonl and bench/results/sockets-latest.md (with
``-smoke`` in both names for ``--smoke``) and prints the Markdown. Every wait is bounded
(bench/cluster.py), each row by what is left of ``--budget`` seconds too.
"""

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import cluster  # noqa: E402
import loadgen  # noqa: E402
import run  # noqa: E402

DEFAULT_ROWS = "fastapi,daphne,daphne-redis-x2"
ROW_NAME = re.compile(r"^(fastapi|daphne|uvicorn)(-redis)?(?:-x(\d+))?$")
BASELINE = "fastapi"

FULL = cluster.Load(connections=10_000, events=100)
SMOKE = cluster.Load(
    connections=300,
    events=20,
    idle_seconds=2.0,
    workers=2,
    source_addresses=2,
    connect_timeout=30.0,
    deadline=30.0,
    stall=5.0,
)
FULL_BUDGET = 1200.0
SMOKE_BUDGET = 300.0


def parse_rows(text: str) -> list[tuple[str, str, bool, int]]:
    """(row name, server kind, on Redis, processes) of each comma-separated row name."""
    rows = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        match = ROW_NAME.match(name)
        if match is None:
            raise SystemExit(f"unknown row {name!r}: fastapi, daphne or uvicorn[-redis][-xN]")
        kind, redis, processes = match.group(1), bool(match.group(2)), int(match.group(3) or 1)
        if kind == "fastapi" and (redis or processes > 1):
            raise SystemExit("the FastAPI baseline runs as one process on no channel layer")
        if processes > 1 and not redis:
            raise SystemExit(f"{name}: several processes share events only through -redis")
        rows.append((name, kind, redis, processes))
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    base = next((row for row in rows if row["server"] == BASELINE), None)
    for row in rows:
        for key in ("rss_per_connection_kib", "frames_per_s", "latency_p99_ms", "connect_p99_ms"):
            ours, theirs = row.get(key), base.get(key) if base else None
            row[f"{key}_vs_fastapi"] = round(ours / theirs, 2) if ours and theirs else None


def ratio(value: float | None) -> str:
    return f" ({value:.2f}x)" if value is not None else ""


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    load = meta["load"]
    mode = "SMOKE run (scaled down; not the scenario's figures)" if meta["smoke"] else "full run"
    lines = [
        f"# Ten thousand sockets: {mode}",
        "",
        f"- When: {meta['timestamp']}; command: `{meta['command']}`",
        f"- Machine: {meta['machine']}",
        f"- Versions: {meta['versions']}",
        f"- Load: {load['connections']:,} subscribers of one graph per row from "
        f"{load['workers']} loadgen processes (lean client, {load['concurrency']} connects in "
        f"flight, source addresses 127.0.0.1-{load['source_addresses']}); then "
        f"{load['idle_seconds']:g} s idle; then {load['events']} events "
        + (
            f"paced at {load['rate']:g}/s"
            if load["rate"]
            else f"in batches of {load['batch']}, one request in flight"
        )
        + ". Servers as in bench/run.py (fresh per row; our app on bench/bench_settings.py).",
        "- Connect: the slowest worker's connect phase; per connection, TCP connect to the "
        "subscribe ack. Memory: RSS of the server processes after connecting (plus a settle "
        "second) minus after warm-up, per connection. CPU from /proc/<pid>/stat.",
        "- Pre-flight: " + "; ".join(meta["preflight"]),
        f"- Open-file limits the processes ran with (/proc/<pid>/limits): {meta['limits']}",
        "- Ratios in parentheses are against the FastAPI row of this run.",
        "",
        "## Connect and idle",
        "",
        "| row | processes | connected / wanted | connect s | connects/s | per connection "
        "p50 / p99 / max ms | RSS before -> after MiB | KiB per connection | idle CPU s (% of a "
        "core) | notes |",
        "|" + "---|" * 10,
    ]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    row["server"],
                    str(row["processes"]),
                    f"{cluster.fmt(row['connected'])} / {cluster.fmt(row['subscribers'])}",
                    cluster.fmt(row["connect_s"], 2),
                    cluster.fmt(row["connects_per_s"]),
                    f"{cluster.fmt(row['connect_p50_ms'], 2)} / "
                    f"{cluster.fmt(row['connect_p99_ms'], 2)}"
                    f"{ratio(row.get('connect_p99_ms_vs_fastapi'))} / "
                    f"{cluster.fmt(row['connect_max_ms'], 2)}",
                    f"{cluster.mib(row['rss_before'])} -> {cluster.mib(row['rss_after'])}",
                    cluster.fmt(row["rss_per_connection_kib"], 1)
                    + ratio(row.get("rss_per_connection_kib_vs_fastapi")),
                    f"{cluster.fmt(row['idle_server_cpu_s'], 2)} "
                    f"({cluster.fmt(row['idle_cpu_percent'], 1)} %)",
                    "; ".join(row["notes"]).replace("|", "/")[:300],
                ]
            )
            + " |"
        )
    lines += [
        "",
        "## Fan-out to every connection",
        "",
        "| row | delivered / expected | lost | dup | out of order | delivered frames/s | "
        "p50 / p99 / max ms | server CPU s | us CPU per frame | Redis CPU s | client CPU s |",
        "|" + "---|" * 11,
    ]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    row["server"],
                    f"{cluster.fmt(row['delivered'])} / {cluster.fmt(row['expected'])}",
                    cluster.fmt(row["lost"]),
                    cluster.fmt(row["duplicated"]),
                    cluster.fmt(row["out_of_order"]),
                    cluster.fmt(row["frames_per_s"]) + ratio(row.get("frames_per_s_vs_fastapi")),
                    f"{cluster.fmt(row['latency_p50_ms'], 2)} / "
                    f"{cluster.fmt(row['latency_p99_ms'], 2)}"
                    f"{ratio(row.get('latency_p99_ms_vs_fastapi'))} / "
                    f"{cluster.fmt(row['latency_max_ms'], 2)}",
                    cluster.fmt(row["server_cpu_s"], 2),
                    cluster.fmt(row["cpu_us_per_frame"], 1),
                    cluster.fmt(row["redis_cpu_s"], 2),
                    cluster.fmt(row["client_cpu_s"], 2),
                ]
            )
            + " |"
        )
    lines.append("")
    return "\n".join(lines)


async def run_rows(
    ctx: run.Context,
    rows: list[tuple[str, str, bool, int]],
    load: cluster.Load,
    separate_ingest: bool,
    site: Any,
    token: str,
    redis_url: str,
) -> list[dict[str, Any]]:
    results = []
    for name, kind, redis, processes in rows:
        spec, skipped = cluster.spec_for(kind, redis, site, token, redis_url)
        if spec is None:
            row = cluster.new_row(run.ServerSpec(name, kind, "-", {}), "sockets", name, "")
            row["notes"].extend(skipped or ["skipped"])
            results.append(row)
            run.log(f"[sockets] {name}: skipped ({'; '.join(skipped)})")
            continue
        left = ctx.deadline - time.monotonic()
        started = time.monotonic()
        try:
            if left < run.MIN_SECONDS_LEFT:
                raise TimeoutError("the run's time budget is spent")
            row = await asyncio.wait_for(
                cluster.measure(
                    ctx,
                    spec,
                    scenario="sockets",
                    name=name,
                    processes=processes,
                    separate_ingest=separate_ingest and processes > 1,
                    load=load,
                    redis_url=redis_url,
                ),
                left,
            )
        except Exception as exc:
            row = cluster.new_row(spec, "sockets", name, "")
            row["processes"] = processes
            row["subscribers"] = load.connections
            row["notes"].append(f"failed: {type(exc).__name__}: {exc}"[:800])
        row["wall_s"] = round(time.monotonic() - started, 1)
        run.log(
            f"[sockets] {name}: {row['connected']}/{load.connections} connected in "
            f"{row['connect_s']} s (p99 {row['connect_p99_ms']} ms), "
            f"{row['rss_per_connection_kib']} KiB/conn, idle CPU {row['idle_server_cpu_s']} s; "
            f"{row['delivered']}/{row['expected']} delivered, lost {row['lost']}, "
            f"{row['frames_per_s']} frames/s, p99 {row['latency_p99_ms']} ms; "
            f"{row['wall_s']} s wall"
            + (f" | {'; '.join(row['notes'])[:300]}" if row["notes"] else "")
        )
        results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, same code")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"default {DEFAULT_ROWS}")
    parser.add_argument(
        "--ingest",
        choices=("first", "separate"),
        default="first",
        help="multi-process rows publish to the first serving process or to an extra one",
    )
    cluster.add_load_options(parser)
    parser.add_argument("--budget", type=float, help="seconds for the whole run")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", run.DEFAULT_REDIS_URL))
    parser.add_argument("--results", type=Path, default=run.RESULTS, help="output directory")
    args = parser.parse_args(argv)

    began = time.monotonic()
    load = cluster.load_from(args, SMOKE if args.smoke else FULL)
    budget = args.budget or (SMOKE_BUDGET if args.smoke else FULL_BUDGET)
    rows = parse_rows(args.rows)
    most_per_process = max(cluster.ceil_div(load.connections, p) for _, _, _, p in rows)
    preflight = cluster.preflight(most_per_process, load)
    for note in preflight:
        run.log(note)
    run_id = secrets.token_hex(4)
    graph_ids = [f"bench-{run_id}-sockets"]
    timestamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="bench-sockets-") as temporary:
        directory = Path(temporary)
        site, token = None, ""
        if any(kind != "fastapi" for _, kind, _, _ in rows):
            run.log("preparing the SQLite site of our app ...")
            site, token = run.prepare_our_site(directory, graph_ids)
        ctx = cluster.new_context(load.workers, graph_ids, directory, began + budget, run_id)
        try:
            results = asyncio.run(
                run_rows(ctx, rows, load, args.ingest == "separate", site, token, args.redis_url),
                loop_factory=loadgen.new_event_loop_factory(),
            )
        finally:
            run._kill_leftovers()

    add_ratios(results)
    meta = {
        "timestamp": timestamp,
        "smoke": args.smoke,
        "command": " ".join(["python", "bench/sockets.py", *(argv or sys.argv[1:])]),
        "machine": run.machine(),
        "versions": run.versions(),
        "load": asdict(load),
        "ingest": args.ingest,
        "preflight": preflight,
        "limits": cluster.describe_limits(results),
        "run_seconds": round(time.monotonic() - began, 1),
    }
    suffix = "-smoke" if args.smoke else ""
    with (args.results / f"sockets-{timestamp}{suffix}.jsonl").open("w") as out:
        out.write(json.dumps({"meta": meta}) + "\n")
        for row in results:
            out.write(json.dumps({**row, "run": timestamp, "smoke": args.smoke}) + "\n")
    text = markdown(results, meta) + f"\nWhole run: {meta['run_seconds']} s.\n"
    (args.results / f"sockets-latest{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
