"""Where the latency scenario's publish-to-receive time goes inside our server, stage by stage.

Runs scenario (c) of bench/run.py (10 subscribers, single-event publishes paced at 100/s,
in-memory layer) under daphne and under uvicorn, each server started on bench/probe_asgi.py,
which notes when every event reaches each stage of the ingest-to-socket path without changing
the app. Prints, per server, a Markdown table of the time from each stage to the next (p50 /
p90 / p99 over the events), the total from the first mark to the last, and the scenario's own
publish-to-receive latency as the clients measured it: the difference is what happens outside
the marks (the publisher's request on its way in, the frame on its way out, the clients).
Writes the tables to bench/results/latency-breakdown.md too.

    .venv/bin/python bench/latency_breakdown.py                    # 1000 events per server
    .venv/bin/python bench/latency_breakdown.py --events 500 --servers daphne
"""

import argparse
import asyncio
import dataclasses
import itertools
import json
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Next to this script, so on sys.path; run.py puts the project root there too.
import loadgen
import run

SERVERS = ("daphne", "uvicorn")
PROBE_ASGI = "probe_asgi:application"
OUTPUT = run.RESULTS / "latency-breakdown.md"

# Every stage probe_asgi.py marks, with its label; the tables order them as the events reach them.
STAGES = {
    "bytes": "request bytes arrive",
    "process": "daphne process()",
    "app": "app entry",
    "writer_start": "writer start",
    "writer_end": "writer end",
    "loop": "back on the loop",
    "first_send": "first frame sent",
    "last_send": "last frame sent",
    "first_write": "first socket write",
    "last_write": "last socket write",
}

Marks = dict[str, int]


@dataclasses.dataclass
class Breakdown:
    server: str
    row: dict[str, Any]  # the scenario's row, as run.py reports it
    events: dict[str, Marks]  # event key -> stage -> perf_counter_ns, from probe_asgi.py


def read_marks(path: Path) -> dict[str, Marks]:
    """The events probe_asgi.py wrote: one JSON mapping per line, merged."""
    events: dict[str, Marks] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            events.update(json.loads(line))
    return events


async def measure(ctx: run.Context, spec: run.ServerSpec, directory: Path) -> Breakdown:
    out = directory / f"{spec.name}-marks.jsonl"
    probed = dataclasses.replace(
        spec, asgi=PROBE_ASGI, env={**spec.env, "EXECUTIONS_PROBE_OUT": str(out)}
    )
    started = time.monotonic()
    (row,) = await run.scenario_latency(ctx, probed)
    row["wall_s"] = round(time.monotonic() - started, 1)
    run.log(run.summary_line(row))
    return Breakdown(spec.name, row, read_marks(out))


async def measure_all(
    ctx: run.Context, specs: list[run.ServerSpec], directory: Path
) -> list[Breakdown]:
    return [await measure(ctx, spec, directory) for spec in specs]


def complete_events(events: dict[str, Marks], stages: list[str], sends: int) -> list[Marks]:
    """Events with every stage marked and sent to every subscriber.

    That leaves out the warm-up publish to a graph nobody follows (it has no sends) and any
    event whose marks were not all written before the server stopped.
    """
    return [
        marks
        for marks in events.values()
        if marks.get("sends") == sends and all(stage in marks for stage in stages)
    ]


def in_order(stages: list[str], events: list[Marks]) -> list[str]:
    """The stages in the order events reach them: by their median time after the writer start.

    The order of sends and socket writes depends on the path a frame takes: sent straight to the
    socket, each write follows its send; through Twisted's buffer, every write comes after the
    last send, on a later turn of the loop.
    """

    def median_after_writer(stage: str) -> float:
        offsets = sorted(marks[stage] - marks["writer_start"] for marks in events)
        return run.percentile(offsets, 0.50)

    return sorted(stages, key=median_after_writer)


def spans_us(events: list[Marks], start: str, end: str) -> list[int]:
    return sorted((marks[end] - marks[start]) // 1000 for marks in events)


def quantiles_us(values: list[int]) -> list[str]:
    return [f"{run.percentile(values, q):,.0f}" for q in (0.50, 0.90, 0.99)]


def table(breakdown: Breakdown, subscribers: int) -> str:
    row = breakdown.row
    seen = {stage for marks in breakdown.events.values() for stage in marks}
    present = [stage for stage in STAGES if stage in seen]
    events = complete_events(breakdown.events, present, subscribers)
    lines = [f"## {breakdown.server}", ""]
    if not events:
        return "\n".join([*lines, "No event has every stage marked.", ""])
    stages = in_order(present, events)
    lines += [
        f"{len(events)} events of {row['published']} published ({subscribers} subscribers, "
        f"{row['delivered']:,} / {row['expected']:,} frames delivered).",
        "",
        "| stage → next stage | p50 µs | p90 µs | p99 µs |",
        "|---|---:|---:|---:|",
    ]
    for start, end in itertools.pairwise(stages):
        cells = quantiles_us(spans_us(events, start, end))
        lines.append(f"| {STAGES[start]} → {STAGES[end]} | " + " | ".join(cells) + " |")
    total = spans_us(events, stages[0], stages[-1])
    cells = quantiles_us(total)
    lines.append(
        f"| **total: {STAGES[stages[0]]} → {STAGES[stages[-1]]}** | "
        + " | ".join(f"**{cell}**" for cell in cells)
        + " |"
    )
    p50_ms, p99_ms = row["latency_p50_ms"], row["latency_p99_ms"]
    if p50_ms is not None:
        lines.append(
            f"| scenario publish-to-receive (clients) | {p50_ms * 1000:,.0f} | - | "
            f"{p99_ms * 1000:,.0f} |"
        )
        share = run.percentile(total, 0.50) / (p50_ms * 1000)
        lines += [
            "",
            f"The marks cover {share:.0%} of the scenario's p50. The rest is outside them: "
            "the request on its way in before the first mark, the frame on its way out after "
            "the last, and the clients.",
        ]
    if row["notes"]:
        lines += ["", "Notes: " + "; ".join(row["notes"])]
    return "\n".join([*lines, ""])


def report(breakdowns: list[Breakdown], sizes: run.Sizes, command: str, when: str) -> str:
    header = [
        "# Latency breakdown: scenario (c), stage by stage inside the server",
        "",
        f"- When: {when}; command: `{command}`",
        f"- Machine: {run.machine()}",
        f"- Versions: {run.versions()}",
        f"- Scenario: {sizes.latency_subscribers} subscribers, {sizes.latency_events} "
        f"single-event publishes at {sizes.latency_rate:g}/s, in-memory layer, SQLite; the "
        "servers run bench/probe_asgi.py, which marks each event at each stage "
        "(`time.perf_counter_ns()`, in the server process).",
        "- Each row is the time from one stage to the next, per event, in the order the events "
        "reach the stages (by median); percentiles of each row are taken on their own, so they "
        "do not add up to the total's. Under uvicorn the marks run from the app's entry to the "
        "last frame sent: its sockets are uvloop's, written from C code that cannot be wrapped.",
        "- The probes cost the server a microsecond or two per mark, a few tens of microseconds "
        "per event, so the scenario's figures here sit a little above those of an unprobed "
        "run (bench/run.py).",
        "",
    ]
    sections = [table(breakdown, sizes.latency_subscribers) for breakdown in breakdowns]
    return "\n".join([*header, *sections])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1000, help="publishes per server")
    parser.add_argument("--servers", default=",".join(SERVERS), help=", ".join(SERVERS))
    parser.add_argument("--output", type=Path, default=OUTPUT, help="Markdown file to write")
    args = parser.parse_args(argv)

    servers = run.parse_list(args.servers, SERVERS, {})
    sizes = dataclasses.replace(run.FULL, latency_events=args.events)
    run_id = secrets.token_hex(4)
    graph_ids = [f"bench-{run_id}-0"]
    when = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-") as temporary:
        directory = Path(temporary)
        run.log("preparing the SQLite site of our app ...")
        site, token = run.prepare_our_site(directory, graph_ids)
        specs, _ = run.server_specs(servers, site, token, run.DEFAULT_REDIS_URL)
        ctx = run.Context(
            sizes=sizes,
            quick=False,
            workers=2,
            client="lean",
            graph_ids=graph_ids,
            log_dir=directory,
            deadline=time.monotonic() + 3600,  # only run_all reads it; the scenario bounds itself
            run_id=run_id,
        )
        # run.py kills any server left behind at exit.
        breakdowns = asyncio.run(
            measure_all(ctx, specs, directory), loop_factory=loadgen.new_event_loop_factory()
        )

    command = " ".join(["python", "bench/latency_breakdown.py", *(argv or sys.argv[1:])])
    text = report(breakdowns, sizes, command, when)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
