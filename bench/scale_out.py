"""Scale-out: one, two and four processes of our app (daphne) on the Redis pub/sub layer.

For each process count P (``--processes``, default 1,2,4) the run starts P serving processes
and, by default, one more process of our app that only ingests (``--ingest separate``: the
publisher posts there and no subscriber connects to it, so every serving process gets each
event through Redis alike; ``--ingest first`` posts to the first serving process instead).
``--connections`` subscribers of one graph are split evenly over the serving processes and
``--events`` events are published (bench/cluster.py measures; bench/run.py's servers and
publisher, bench/loadgen.py's clients). Per P it reports delivered / expected, lost, duplicated,
out of order, total delivered frames/s, publish-to-receive p50 / p99, and each process's CPU
seconds over the fan-out (``/proc/<pid>/stat`` before the first publish and after every client
reported) with Redis's (``INFO cpu``).

From those it fits a cost model (the output states its assumptions): a serving process spends
``a`` CPU seconds per event it receives and ``b`` per frame it sends (least squares over every
serving process of every P: the frames per process change with P, the events do not), the
ingest process ``c`` per event, Redis ``r0 + r1 * P`` per event; and predicts the delivered
frames/s of a 32-core deployment (``--cores``).

On a 2-core machine the P processes, Redis and the clients share two cores, so the measured
frames/s cannot grow with P there: the CPU per frame is what carries over to a larger machine.

    .venv/bin/python bench/scale_out.py                 # 4,000 connections, 200 events, P=1,2,4
    .venv/bin/python bench/scale_out.py --smoke         # 300 connections, 20 events, P=1,2
    .venv/bin/python bench/scale_out.py --processes 1,2,4,8 --connections 8000 --cores 64

Writes bench/results/scale-out-<timestamp>.jsonl, bench/results/scale-out-latest.md and
bench/results/scale-out-latest.png (``-smoke`` in the names for ``--smoke``) and prints the
Markdown. Every wait is bounded (bench/cluster.py), each P by what is left of ``--budget`` too.
"""

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import cluster  # noqa: E402
import loadgen  # noqa: E402
import run  # noqa: E402

FULL = cluster.Load(connections=4000, events=200, batch=10, idle_seconds=2.0)
SMOKE = cluster.Load(
    connections=300,
    events=20,
    batch=5,
    idle_seconds=1.0,
    workers=2,
    source_addresses=2,
    connect_timeout=30.0,
    deadline=30.0,
    stall=5.0,
)
FULL_PROCESSES = "1,2,4"
SMOKE_PROCESSES = "1,2"
FULL_BUDGET = 900.0
SMOKE_BUDGET = 300.0
SERVER_KINDS = ("daphne", "uvicorn")


# ----------------------------------------------------------------------------------------
# The model


@dataclass
class Model:
    a: float | None = None  # CPU s per event received, per serving process
    b: float | None = None  # CPU s per frame sent
    c: float | None = None  # CPU s per event ingested (store + publish to Redis)
    r0: float | None = None  # Redis CPU s per event, fixed part
    r1: float | None = None  # Redis CPU s per event per subscribed process
    points: int = 0
    notes: list[str] | None = None


def fit(rows: list[dict[str, Any]]) -> Model:
    """Least squares of the per-process CPU over the measured rows (see the module docstring)."""
    import numpy as np

    model = Model(notes=[])
    notes: list[str] = model.notes  # type: ignore[assignment]
    serving = [
        entry
        for row in rows
        for entry in row["per_process"]
        if entry["role"] == "serve" and not entry["ingests"] and entry["cpu_s"] is not None
        if entry["frames"] and entry["events"]
    ]
    model.points = len(serving)
    if not serving:
        notes.append("no serving process without ingest measured: no model")
        return model
    events = np.array([float(entry["events"]) for entry in serving])
    frames = np.array([float(entry["frames"]) for entry in serving])
    cpu = np.array([float(entry["cpu_s"]) for entry in serving])
    ratios = {round(f / e, 3) for f, e in zip(frames, events, strict=True)}
    a = b = None
    if len(ratios) > 1:
        solution, *_ = np.linalg.lstsq(np.column_stack([events, frames]), cpu, rcond=None)
        if solution[0] >= 0 and solution[1] > 0:
            a, b = float(solution[0]), float(solution[1])
        else:
            notes.append(
                f"the two-parameter fit gave a={solution[0]:.3g}, b={solution[1]:.3g} s "
                "(negative): per-event cost taken as 0"
            )
    else:
        notes.append(
            "every serving process measured had the same frames per event (one process "
            "count): a per-event cost cannot be told apart, taken as 0"
        )
    if a is None or b is None:
        a, b = 0.0, float(cpu.sum() / frames.sum())
    model.a, model.b = a, b

    ingest_costs = []
    for row in rows:
        for entry in row["per_process"]:
            if entry["ingests"] and entry["cpu_s"] is not None and entry["events"]:
                serving_part = a * entry["events"] + b * entry["frames"] if entry["frames"] else 0
                ingest_costs.append((entry["cpu_s"] - serving_part) / entry["events"])
    if ingest_costs:
        model.c = max(0.0, sum(ingest_costs) / len(ingest_costs))

    redis = [
        (row["processes"], row["redis_cpu_s"] / row["published"])
        for row in rows
        if row.get("redis_cpu_s") is not None and row["published"]
    ]
    if len({p for p, _ in redis}) > 1:
        xs = np.array([float(p) for p, _ in redis])
        ys = np.array([y for _, y in redis])
        (r1, r0), *_ = np.linalg.lstsq(np.column_stack([xs, np.ones_like(xs)]), ys, rcond=None)
        model.r0, model.r1 = max(0.0, float(r0)), max(0.0, float(r1))
    elif redis:
        processes, per_event = redis[0]
        model.r0, model.r1 = 0.0, per_event / processes
    return model


def predict(model: Model, cores: int, fanout: int) -> dict[str, Any]:
    """Delivered frames/s of `cores` serving processes, `fanout` subscribers per event."""
    if model.b is None or model.a is None:
        return {}
    per_event_cpu = (model.c or 0.0) + cores * model.a + model.b * fanout
    cpu_events = cores / per_event_cpu
    redis_per_event = (model.r0 or 0.0) + (model.r1 or 0.0) * cores
    redis_events = 1 / redis_per_event if redis_per_event > 0 else None
    events = min(cpu_events, redis_events) if redis_events else cpu_events
    return {
        "cores": cores,
        "fanout": fanout,
        "events_per_s": round(events, 1),
        "frames_per_s": round(events * fanout),
        "limited_by": "Redis" if redis_events and redis_events < cpu_events else "server CPU",
        "cpu_bound_frames_per_s": round(cpu_events * fanout),
        "redis_bound_frames_per_s": round(redis_events * fanout) if redis_events else None,
        "per_frame_only_frames_per_s": round(cores / model.b),
    }


ASSUMPTIONS = [
    "One serving process per core: a daphne process runs its event loop on one core; {cores} "
    "processes on {cores} cores, with Redis, the publishers and the clients on other cores or "
    "machines.",
    "A serving process's CPU is a per event it receives (each process receives every event of a "
    "graph it has subscribers of: here one graph that every process follows, the worst case) "
    "plus b per frame it sends; fitted on this machine, and a core of the deployment is as fast "
    "as one here. The CPU counted is the publish window's, idle work in it included.",
    "Ingest (storing the event, publishing it to Redis) costs c per event on whichever process "
    "receives it, spread over the processes by the load balancer; measured with this run's "
    "batch size and this machine's disk (SQLite).",
    "Redis is one core: r0 + r1 x processes CPU seconds per event (one pub/sub message per event, "
    "one copy per subscribed process); Redis's INFO counts every client, so load from anything "
    "else on this machine's Redis inflates it.",
    "Subscribers spread evenly over the processes; CPU is the only limit: no network, kernel "
    "or memory-bandwidth ceiling (here everything is loopback), no publisher-side ordering limit "
    "(many publishers, not one request in flight), and linear scaling (no lock or cache "
    "contention between processes).",
]


# ----------------------------------------------------------------------------------------
# Report


def markdown(rows: list[dict[str, Any]], model: Model, meta: dict[str, Any]) -> str:
    load = meta["load"]
    cores = meta["cores"]
    mode = "SMOKE run (scaled down; not the scenario's figures)" if meta["smoke"] else "full run"
    publishing = (
        f"paced at {load['rate']:g}/s"
        if load["rate"]
        else f"in batches of {load['batch']}, one request in flight, as fast as it is accepted"
    )
    lines = [
        f"# Scale-out on Redis pub/sub: {mode}",
        "",
        f"- When: {meta['timestamp']}; command: `{meta['command']}`",
        f"- Machine: {meta['machine']}",
        f"- Versions: {meta['versions']}",
        f"- Load: {load['connections']:,} subscribers of one graph split evenly over the "
        f"{meta['server']} processes, {load['events']} events {publishing}, published to the "
        f"{meta['ingest_label']}; {load['workers']} loadgen processes (lean client).",
        (
            "- Paced below capacity: the latency is the fan-out's own."
            if load["rate"]
            else "- With the publisher's one request in flight and ingest faster than the "
            "fan-out, the events queue in the servers: the frames/s is the processes' capacity "
            "and the latency includes that queue (`--rate` publishes below capacity instead)."
        ),
        "- CPU from /proc/<pid>/stat over the window from the first publish until every client "
        "reported; Redis CPU from INFO cpu over the same window.",
        f"- Open-file limits the processes ran with: {meta['limits']}; pre-flight: "
        + "; ".join(meta["preflight"]),
        "",
        "## Measured",
        "",
        "| processes | connected / wanted | delivered / expected | lost | dup | out of order | "
        "delivered frames/s | p50 / p99 / max ms | serving CPU s per process | ingest CPU s | "
        "Redis CPU s | us CPU per frame per serving process | client CPU s | notes |",
        "|" + "---|" * 14,
    ]
    for row in rows:
        serving = [e for e in row["per_process"] if e["role"] == "serve"]
        ingest = [e for e in row["per_process"] if e["ingests"]]
        per_frame = [e["cpu_us_per_frame"] for e in serving if e["cpu_us_per_frame"] is not None]
        lines.append(
            "| "
            + " | ".join(
                [
                    str(row["processes"]),
                    f"{cluster.fmt(row['connected'])} / {cluster.fmt(row['subscribers'])}",
                    f"{cluster.fmt(row['delivered'])} / {cluster.fmt(row['expected'])}",
                    cluster.fmt(row["lost"]),
                    cluster.fmt(row["duplicated"]),
                    cluster.fmt(row["out_of_order"]),
                    cluster.fmt(row["frames_per_s"]),
                    f"{cluster.fmt(row['latency_p50_ms'], 2)} / "
                    f"{cluster.fmt(row['latency_p99_ms'], 2)} / "
                    f"{cluster.fmt(row['latency_max_ms'], 2)}",
                    ", ".join(cluster.fmt(e["cpu_s"], 2) for e in serving) or "-",
                    ", ".join(cluster.fmt(e["cpu_s"], 2) for e in ingest) or "-",
                    cluster.fmt(row["redis_cpu_s"], 2),
                    (
                        f"{sum(per_frame) / len(per_frame):.2f} "
                        f"({min(per_frame):.2f}-{max(per_frame):.2f})"
                        if per_frame
                        else "-"
                    ),
                    cluster.fmt(row["client_cpu_s"], 2),
                    "; ".join(row["notes"]).replace("|", "/")[:300],
                ]
            )
            + " |"
        )
    lines += ["", f"## Model and a {cores}-core prediction", "", "Assumptions:", ""]
    lines += [f"{n}. {text.format(cores=cores)}" for n, text in enumerate(ASSUMPTIONS, start=1)]
    lines.append("")

    def us(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e6:.2f} us"

    lines += [
        f"Fitted over {model.points} serving processes: a = {us(model.a)} per event per "
        f"process, b = {us(model.b)} per frame, c = {us(model.c)} per event ingested, Redis "
        f"r0 = {us(model.r0)} + r1 = {us(model.r1)} per subscribed process, per event.",
    ]
    lines += [f"- {note}" for note in model.notes or []]
    lines.append("")
    predictions = meta["predictions"]
    if predictions:
        lines += [
            "| cores | subscribers per event | predicted events/s | predicted delivered "
            "frames/s | limited by | CPU-bound frames/s | Redis-bound frames/s | per-frame "
            "cost only (cores / b) |",
            "|" + "---|" * 8,
        ]
        for item in predictions:
            lines.append(
                f"| {item['cores']} | {item['fanout']:,} | {cluster.fmt(item['events_per_s'])} | "
                f"{cluster.fmt(item['frames_per_s'])} | {item['limited_by']} | "
                f"{cluster.fmt(item['cpu_bound_frames_per_s'])} | "
                f"{cluster.fmt(item['redis_bound_frames_per_s'])} | "
                f"{cluster.fmt(item['per_frame_only_frames_per_s'])} |"
            )
        if meta["smoke"]:
            lines += ["", "A smoke run's fit rests on a few hundred frames: not a prediction."]
    else:
        lines.append("No prediction: the model could not be fitted.")
    lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in rows if row["frames_per_s"]]
    processes = [row["processes"] for row in measured]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 4.2))
    left.plot(processes, [row["frames_per_s"] for row in measured], "o-")
    left.set_title("Delivered frames/s (higher is better)")
    middle.plot(processes, [row["latency_p99_ms"] or 0 for row in measured], "o-", color="tab:red")
    middle.set_title("p99 publish-to-receive ms")
    for row in measured:
        per_frame = [
            e["cpu_us_per_frame"]
            for e in row["per_process"]
            if e["role"] == "serve" and e["cpu_us_per_frame"] is not None
        ]
        right.scatter([row["processes"]] * len(per_frame), per_frame, color="tab:green")
    right.set_title("CPU us per frame, each serving process")
    for axis in (left, middle, right):
        axis.set_xlabel("serving processes")
        axis.set_xticks(sorted(set(processes)) or [1])
        axis.set_ylim(bottom=0)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ----------------------------------------------------------------------------------------
# Main


async def run_counts(
    ctx: run.Context,
    spec: run.ServerSpec,
    counts: list[int],
    load: cluster.Load,
    separate_ingest: bool,
    redis_url: str,
) -> list[dict[str, Any]]:
    rows = []
    for processes in counts:
        name = f"{spec.name}-x{processes}"
        left = ctx.deadline - time.monotonic()
        started = time.monotonic()
        try:
            if left < run.MIN_SECONDS_LEFT:
                raise TimeoutError("the run's time budget is spent")
            row = await asyncio.wait_for(
                cluster.measure(
                    ctx,
                    spec,
                    scenario="scale-out",
                    name=name,
                    processes=processes,
                    separate_ingest=separate_ingest,
                    load=load,
                    redis_url=redis_url,
                ),
                left,
            )
        except Exception as exc:
            row = cluster.new_row(spec, "scale-out", name, "")
            row.update(processes=processes, subscribers=load.connections)
            row["notes"].append(f"failed: {type(exc).__name__}: {exc}"[:800])
        row["wall_s"] = round(time.monotonic() - started, 1)
        cpus = ", ".join(f"{e['role']} {e['cpu_s']}" for e in row["per_process"])
        run.log(
            f"[scale-out] {processes} process(es): {row['connected']}/{load.connections} "
            f"connected, {row['delivered']}/{row['expected']} delivered, lost {row['lost']}, "
            f"{row['frames_per_s']} frames/s, p99 {row['latency_p99_ms']} ms, CPU s [{cpus}], "
            f"Redis {row['redis_cpu_s']} s; {row['wall_s']} s wall"
            + (f" | {'; '.join(row['notes'])[:300]}" if row["notes"] else "")
        )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, same code")
    parser.add_argument("--processes", help=f"serving process counts (default {FULL_PROCESSES})")
    parser.add_argument("--server", choices=SERVER_KINDS, default="daphne")
    parser.add_argument("--ingest", choices=("separate", "first"), default="separate")
    parser.add_argument("--cores", type=int, default=32, help="cores of the predicted deployment")
    cluster.add_load_options(parser)
    parser.add_argument("--budget", type=float, help="seconds for the whole run")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", run.DEFAULT_REDIS_URL))
    parser.add_argument("--results", type=Path, default=run.RESULTS, help="output directory")
    args = parser.parse_args(argv)

    began = time.monotonic()
    load = cluster.load_from(args, SMOKE if args.smoke else FULL)
    counts = cluster.parse_ints(
        args.processes or (SMOKE_PROCESSES if args.smoke else FULL_PROCESSES)
    )
    budget = args.budget or (SMOKE_BUDGET if args.smoke else FULL_BUDGET)
    if not run.redis_answers(args.redis_url):
        raise SystemExit(f"Redis does not answer at {args.redis_url}")
    preflight = cluster.preflight(cluster.ceil_div(load.connections, min(counts)), load)
    for note in preflight:
        run.log(note)
    run_id = secrets.token_hex(4)
    graph_ids = [f"bench-{run_id}-scale-out"]
    timestamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as temporary:
        directory = Path(temporary)
        run.log("preparing the SQLite site of our app ...")
        site, token = run.prepare_our_site(directory, graph_ids)
        spec, skipped = cluster.spec_for(args.server, True, site, token, args.redis_url)
        if spec is None:
            raise SystemExit("; ".join(skipped))
        ctx = cluster.new_context(load.workers, graph_ids, directory, began + budget, run_id)
        try:
            rows = asyncio.run(
                run_counts(ctx, spec, counts, load, args.ingest == "separate", args.redis_url),
                loop_factory=loadgen.new_event_loop_factory(),
            )
        finally:
            run._kill_leftovers()

    model = fit(rows)
    fanouts = sorted({load.connections, 10_000})
    predictions = [p for p in (predict(model, args.cores, f) for f in fanouts) if p]
    meta = {
        "timestamp": timestamp,
        "smoke": args.smoke,
        "command": " ".join(["python", "bench/scale_out.py", *(argv or sys.argv[1:])]),
        "machine": run.machine(),
        "versions": run.versions(),
        "server": args.server,
        "load": asdict(load),
        "processes": counts,
        "ingest": args.ingest,
        "ingest_label": "ingest-only process" if args.ingest == "separate" else "first process",
        "cores": args.cores,
        "model": asdict(model),
        "assumptions": [text.format(cores=args.cores) for text in ASSUMPTIONS],
        "predictions": predictions,
        "preflight": preflight,
        "limits": cluster.describe_limits(rows),
        "run_seconds": round(time.monotonic() - began, 1),
    }
    suffix = "-smoke" if args.smoke else ""
    with (args.results / f"scale-out-{timestamp}{suffix}.jsonl").open("w") as out:
        out.write(json.dumps({"meta": meta}) + "\n")
        for row in rows:
            out.write(json.dumps({**row, "run": timestamp, "smoke": args.smoke}) + "\n")
    text = markdown(rows, model, meta) + f"\nWhole run: {meta['run_seconds']} s.\n"
    (args.results / f"scale-out-latest{suffix}.md").write_text(text)
    mode = "smoke run, scaled down" if args.smoke else "full run"
    plot(rows, args.results / f"scale-out-latest{suffix}.png", f"Scale-out on Redis ({mode})")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
