"""Which channel layer should carry the fan-out of execution events?

Measures, for InMemoryChannelLayer, channels_redis.core.RedisChannelLayer and
channels_redis.pubsub.RedisPubSubChannelLayer (Redis at redis://127.0.0.1:6379/0, a unique
``prefix`` per run):

* Fan-out: S subscribers (default 100), each a consumer-like receiver: a channel from
  ``layer.new_channel()``, ``group_add`` to one graph group, and a task looping on
  ``await layer.receive(channel)``. A publisher does ``group_send`` N times (default 1000) as
  fast as it can, each event an ``execution.result`` with a real ~600-byte frame and its
  sequence number ``seq``. The Redis layers run with the publisher in another process (its own
  layer instance, as the ingest worker would be) and again in the subscribers' event loop, where
  each await lets the receivers catch up; the in-memory layer can only do the latter.
  Reported: delivered vs expected (S*N), lost, duplicated, out of order (a message arriving after
  a later one, per subscriber), publish time, wall time until everything arrived (or the bounded
  wait gave up: 30 s after the last send, or 3 s without progress) and messages/s delivered.
* Membership churn: 1000 concurrent ``group_add`` then 1000 concurrent ``group_discard`` on a
  fresh layer instance, timed, with failures (e.g. redis ``MaxConnectionsError``) counted and
  the group's size after each burst.

The layers with a capacity run with the library default (100) and with 20000, the project's
CHANNEL_CAPACITY; the pub/sub layer has no capacity.

Run from the project root (Redis must answer; about 40 s on 2 cores):

    .venv/bin/python bench/layer_choice.py [--subscribers 100] [--messages 1000] [--churn 1000]

Prints a Markdown table and appends the rows as JSON lines to bench/results/layer_choice.jsonl.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "layer_choice.jsonl"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

MEMORY = "channels.layers.InMemoryChannelLayer"
CORE = "channels_redis.core.RedisChannelLayer"
PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"
SHORT_NAMES = {MEMORY: "memory", CORE: "redis core", PUBSUB: "redis pubsub"}

# (backend, capacity, publisher); capacity None leaves it out of CONFIG (the library default).
# "process": the publisher is another OS process, as the ingest worker is in production, so it
# really sends as fast as it can. "loop": it shares the subscribers' event loop, where every
# await lets the receivers catch up; the in-memory layer cannot cross processes, so only this.
RUNS: list[tuple[str, int | None, str]] = [
    (MEMORY, None, "loop"),
    (MEMORY, 20_000, "loop"),
    (CORE, None, "process"),
    (CORE, 20_000, "process"),
    (PUBSUB, None, "process"),
    (CORE, None, "loop"),
    (CORE, 20_000, "loop"),
    (PUBSUB, None, "loop"),
]

FRAME_BYTES = 600
SETUP_TIMEOUT = 30.0  # creating channels and joining the group
SETTLE_SECONDS = 0.5  # let subscriptions reach Redis before the first publish
PUBLISH_TIMEOUT = 30.0  # the whole burst of group_send calls
DRAIN_TIMEOUT = 30.0  # after the last send
STALL_TIMEOUT = 3.0  # no new delivery for this long: give up
CHURN_TIMEOUT = 30.0  # each of the group_add / group_discard bursts
CLEANUP_TIMEOUT = 10.0
POLL_SECONDS = 0.02


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault(
        "DJANGO_SECRET_KEY", "bench-only-secret-key-never-used-in-production-0123456789abcdef"
    )
    import django

    django.setup()


def layer_config(backend: str, capacity: int | None, redis_url: str, prefix: str) -> dict:
    """CHANNEL_LAYERS["default"] for one run, like tests/conftest.py's layer_settings."""
    config: dict[str, Any] = {}
    if backend != MEMORY:
        config["hosts"] = [{"address": redis_url}]
        config["prefix"] = prefix
    if capacity is not None:
        config["capacity"] = capacity
    return {"BACKEND": backend, "CONFIG": config}


def make_layer(settings: dict) -> Any:
    from django.utils.module_loading import import_string

    return import_string(settings["BACKEND"])(**settings["CONFIG"])


def effective_capacity(layer: Any) -> int | None:
    return getattr(layer, "capacity", None)


def base_event(graph_id: str) -> dict[str, Any]:
    """A real execution.result layer event whose frame is about FRAME_BYTES long."""
    from executions.fanout import layer_event
    from executions.schemas import ExecutionResult, ExecutionStatus

    def result(padding: str) -> ExecutionResult:
        now = datetime.now(tz=UTC)
        return ExecutionResult(
            graph_id=graph_id,
            graph_version=1,
            graph_exec_id="bench_exec_id",
            node_exec_id="bench_node_exec_id",
            node_id="bench_node_id",
            block_id="bench_block_id",
            status=ExecutionStatus.COMPLETED,
            input_data={"input1": "value1"},
            output_data={"output1": [padding]},
            add_time=now,
            queue_time=None,
            start_time=now,
            end_time=now,
        )

    bare = len(layer_event(result(""))["frame"])
    return layer_event(result("x" * max(FRAME_BYTES - bare, 0)))


@dataclass
class Subscriber:
    channel: str
    messages: int
    seen: bytearray = field(init=False)
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    highest: int = -1

    def __post_init__(self) -> None:
        self.seen = bytearray(self.messages)

    def record(self, seq: int) -> None:
        self.received += 1
        if not 0 <= seq < self.messages or self.seen[seq]:
            self.duplicates += 1
            return
        self.seen[seq] = 1
        if seq < self.highest:
            self.out_of_order += 1
        else:
            self.highest = seq

    @property
    def unique(self) -> int:
        return self.messages - self.seen.count(0)


@dataclass
class Progress:
    delivered: int = 0
    last_delivery: float = 0.0
    errors: Counter = field(default_factory=Counter)


async def receive_loop(layer: Any, sub: Subscriber, progress: Progress) -> None:
    """What a consumer does with its channel; cancelled by the benchmark when it is over."""
    while True:
        try:
            message = await layer.receive(sub.channel)
        except Exception as error:  # count it, keep receiving, as a consumer would
            progress.errors[f"receive:{type(error).__name__}"] += 1
            await asyncio.sleep(0.05)
            continue
        sub.record(int(message.get("seq", -1)))
        progress.delivered += 1
        progress.last_delivery = time.perf_counter()


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=CLEANUP_TIMEOUT)


async def close_layer(layer: Any, errors: Counter) -> None:
    try:
        await asyncio.wait_for(layer.flush(), CLEANUP_TIMEOUT)
    except Exception as error:
        errors[f"flush:{type(error).__name__}"] += 1


async def publish_inline(
    publisher: Any, group: str, event: dict[str, Any], messages: int, errors: Counter
) -> tuple[int, str | None]:
    """Send the burst from this event loop; return (sent, failure status or None)."""
    sent = 0
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT):
            for seq in range(messages):
                try:
                    await publisher.group_send(group, {**event, "seq": seq})
                    sent += 1
                except Exception as error:
                    errors[f"group_send:{type(error).__name__}"] += 1
    except TimeoutError:
        return sent, "publish timeout"
    return sent, None


async def release_layer(layer: Any) -> None:
    """Close a publisher's connections, keeping the queued messages (core's flush deletes)."""
    close_pools = getattr(layer, "close_pools", None)
    await asyncio.wait_for(close_pools() if close_pools else layer.flush(), CLEANUP_TIMEOUT)


def publisher_process(
    settings: dict, group: str, event: dict[str, Any], messages: int, conn: Any
) -> None:
    """The out-of-process publisher: says ready, waits for go, sends the burst, reports."""

    async def publish() -> dict[str, Any]:
        layer = make_layer(settings)
        errors: Counter = Counter()
        conn.send("ready")
        if not conn.poll(SETUP_TIMEOUT):
            return {"sent": 0, "publish_s": 0.0, "status": "no go", "errors": {}}
        conn.recv()
        started = time.perf_counter()
        sent, status = await publish_inline(layer, group, event, messages, errors)
        elapsed = time.perf_counter() - started
        try:
            await release_layer(layer)
        except Exception as error:
            errors[f"close:{type(error).__name__}"] += 1
        return {"sent": sent, "publish_s": elapsed, "status": status, "errors": dict(errors)}

    try:
        report = asyncio.run(publish())
    except Exception as error:
        report = {"sent": 0, "publish_s": 0.0, "status": f"publisher {error!r}", "errors": {}}
    conn.send(report)
    conn.close()


async def receive_from(conn: Any, wait_s: float) -> Any:
    """The next object from a pipe, or None after wait_s seconds or if the other end is gone."""
    if not await asyncio.to_thread(conn.poll, wait_s):
        return None
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


async def fan_out(
    settings: dict, subscribers: int, messages: int, placement: str
) -> dict[str, Any]:
    from executions.groups import graph_group_name

    layer = make_layer(settings)
    # The in-memory layer cannot cross processes, so its publisher must share the instance.
    publisher = layer if settings["BACKEND"] == MEMORY else make_layer(settings)
    graph_id = f"bench-{uuid.uuid4().hex[:8]}"
    group = graph_group_name(graph_id)
    event = base_event(graph_id)
    progress = Progress()
    subs: list[Subscriber] = []
    tasks: list[asyncio.Task] = []
    process = None
    sent = 0
    status = None
    t_start = t_sent = time.perf_counter()
    publish_s = 0.0
    try:
        async with asyncio.timeout(SETUP_TIMEOUT):
            for _ in range(subscribers):
                sub = Subscriber(await layer.new_channel(), messages)
                await layer.group_add(group, sub.channel)
                subs.append(sub)
        tasks = [asyncio.create_task(receive_loop(layer, sub, progress)) for sub in subs]

        if placement == "process":
            context = multiprocessing.get_context("spawn")
            conn, child_conn = context.Pipe()
            process = context.Process(
                target=publisher_process,
                args=(settings, group, event, messages, child_conn),
                daemon=True,
            )
            process.start()
            child_conn.close()
            if await receive_from(conn, SETUP_TIMEOUT) != "ready":
                raise TimeoutError
            await asyncio.sleep(SETTLE_SECONDS)
            t_start = time.perf_counter()
            conn.send("go")
            report = await receive_from(conn, PUBLISH_TIMEOUT + CLEANUP_TIMEOUT)
            t_sent = time.perf_counter()
            if report is None:
                report = {"sent": 0, "publish_s": t_sent - t_start, "status": "publisher lost"}
            sent, publish_s, status = report["sent"], report["publish_s"], report["status"]
            progress.errors.update(report.get("errors", {}))
        else:
            await asyncio.sleep(SETTLE_SECONDS)
            t_start = time.perf_counter()
            sent, status = await publish_inline(publisher, group, event, messages, progress.errors)
            t_sent = time.perf_counter()
            publish_s = t_sent - t_start

        expected = subscribers * messages
        while progress.delivered < expected:
            now = time.perf_counter()
            if now - max(progress.last_delivery, t_sent) > STALL_TIMEOUT:
                status = status or "stalled"
                break
            if now - t_sent > DRAIN_TIMEOUT:
                status = status or "drain timeout"
                break
            await asyncio.sleep(POLL_SECONDS)
    except TimeoutError:
        status = "setup timeout"
    finally:
        await cancel_all(tasks)
        await close_layer(layer, progress.errors)
        if publisher is not layer:
            await close_layer(publisher, progress.errors)
        if process is not None:
            await asyncio.to_thread(process.join, CLEANUP_TIMEOUT)
            if process.is_alive():
                process.terminate()
                await asyncio.to_thread(process.join, CLEANUP_TIMEOUT)

    expected = subscribers * messages
    unique = sum(sub.unique for sub in subs)
    end = progress.last_delivery if progress.delivered else t_sent
    wall = max(end - t_start, 1e-9)
    return {
        "publisher": placement,
        "capacity": effective_capacity(layer),
        "subscribers": subscribers,
        "messages": messages,
        "frame_bytes": len(event["frame"]),
        "sent": sent,
        "expected": expected,
        "delivered": progress.delivered,
        "unique": unique,
        "lost": expected - unique,
        "subscribers_with_loss": sum(1 for sub in subs if sub.unique < messages),
        "duplicated": sum(sub.duplicates for sub in subs),
        "out_of_order": sum(sub.out_of_order for sub in subs),
        "subscribers_out_of_order": sum(1 for sub in subs if sub.out_of_order),
        "status": status or "complete",
        "publish_s": round(publish_s, 3),
        "wall_s": round(wall, 3),
        "delivered_per_s": round(progress.delivered / wall),
        "fanout_errors": dict(progress.errors),
    }


async def group_size(layer: Any, group: str) -> int | None:
    """How many members the layer still holds for the group (None if it cannot tell)."""
    try:
        if hasattr(layer, "_group_key"):  # redis core: a sorted set in Redis
            connection = layer.connection(layer.consistent_hash(group))
            return int(await asyncio.wait_for(connection.zcard(layer._group_key(group)), 5))
        if hasattr(layer, "_get_layer"):  # redis pubsub: an in-process set per loop
            inner = layer._get_layer()
            return len(inner.groups.get(inner._get_group_channel_name(group), ()))
        return len(layer.groups.get(group, {}))  # in-memory
    except Exception:
        return None


async def burst(calls: list, errors: Counter, label: str) -> tuple[float, int]:
    """Run the calls concurrently; return (seconds, failures)."""
    started = time.perf_counter()
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*calls, return_exceptions=True), CHURN_TIMEOUT
        )
    except TimeoutError:
        errors[f"{label}:timeout"] += 1
        return time.perf_counter() - started, len(calls)
    elapsed = time.perf_counter() - started
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    for failure in failures:
        errors[f"{label}:{type(failure).__name__}"] += 1
    return elapsed, len(failures)


async def membership_churn(settings: dict, members: int) -> dict[str, Any]:
    from executions.groups import graph_group_name

    layer = make_layer(settings)
    group = graph_group_name(f"churn-{uuid.uuid4().hex[:8]}")
    errors: Counter = Counter()
    add_s = discard_s = None
    add_failures = discard_failures = None
    after_add = after_discard = None
    try:
        async with asyncio.timeout(SETUP_TIMEOUT):
            channels = [await layer.new_channel() for _ in range(members)]
        add_s, add_failures = await burst(
            [layer.group_add(group, channel) for channel in channels], errors, "group_add"
        )
        after_add = await group_size(layer, group)
        discard_s, discard_failures = await burst(
            [layer.group_discard(group, channel) for channel in channels],
            errors,
            "group_discard",
        )
        after_discard = await group_size(layer, group)
    except TimeoutError:
        errors["churn:setup timeout"] += 1
    finally:
        await close_layer(layer, errors)
    return {
        "churn_members": members,
        "add_s": None if add_s is None else round(add_s, 3),
        "add_failures": add_failures,
        "members_after_add": after_add,
        "discard_s": None if discard_s is None else round(discard_s, 3),
        "discard_failures": discard_failures,
        "members_left_after_discard": after_discard,
        "churn_errors": dict(errors),
    }


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], churn: int) -> str:
    header = (
        "| layer | capacity | publisher | delivered / expected | lost | dup "
        "| out of order (subs) | status | publish s | wall s | delivered/s "
        f"| {churn} group_add s (fail) | {churn} group_discard s (fail) "
        "| in group after add / discard "
        "| errors |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        errors = {**row["fanout_errors"], **row["churn_errors"]}
        lines.append(
            "| "
            + " | ".join(
                [
                    row["layer"],
                    fmt(row["capacity"]),
                    row["publisher"],
                    f"{row['delivered']} / {row['expected']}",
                    str(row["lost"]),
                    str(row["duplicated"]),
                    f"{row['out_of_order']} ({row['subscribers_out_of_order']})",
                    row["status"],
                    str(row["publish_s"]),
                    str(row["wall_s"]),
                    str(row["delivered_per_s"]),
                    f"{fmt(row['add_s'])} ({fmt(row['add_failures'])})",
                    f"{fmt(row['discard_s'])} ({fmt(row['discard_failures'])})",
                    f"{fmt(row['members_after_add'])} / {fmt(row['members_left_after_discard'])}",
                    ", ".join(f"{k}={v}" for k, v in sorted(errors.items())) or "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


@dataclass
class Options:
    subscribers: int
    messages: int
    churn: int
    redis_url: str
    output: Path


def parse_args() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--churn", type=int, default=1000, help="members in the churn burst")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    return Options(args.subscribers, args.messages, args.churn, args.redis_url, args.output)


async def run(options: Options) -> list[dict[str, Any]]:
    run_id = uuid.uuid4().hex[:12]
    rows = []
    for backend, capacity, placement in RUNS:
        name = SHORT_NAMES[backend]
        prefix = f"bench-{run_id}-{name.split()[-1]}-{capacity or 'default'}-{placement}"
        settings = layer_config(backend, capacity, options.redis_url, prefix)
        print(
            f"running {name} capacity={capacity or 'default'} publisher={placement}",
            file=sys.stderr,
        )
        row: dict[str, Any] = {
            "run_id": run_id,
            "at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
            "layer": SHORT_NAMES[backend],
            "backend": backend,
            "prefix": prefix if backend != MEMORY else None,
        }
        row.update(await fan_out(settings, options.subscribers, options.messages, placement))
        churn_settings = layer_config(backend, capacity, options.redis_url, prefix + "-churn")
        row.update(await membership_churn(churn_settings, options.churn))
        rows.append(row)
    return rows


def main() -> int:
    options = parse_args()
    setup_django()
    if not redis_answers(options.redis_url):
        print(f"Redis does not answer at {options.redis_url}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    rows = asyncio.run(run(options))
    print(markdown_table(rows, options.churn))
    options.output.parent.mkdir(parents=True, exist_ok=True)
    with options.output.open("a", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, sort_keys=True) + "\n")
    print(
        f"\n{len(rows)} rows appended to {options.output} in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
