"""What one publish's two thread hops cost on this machine, outside any server.

A publish goes from the event loop to the writer thread (a queue.SimpleQueue) and back (the
writer completes a concurrent.futures.Future the loop awaits through asyncio.wrap_future: one
call_soon_threadsafe, as executions/writers.py makes for a loop's callers). Here the writer
stores nothing: each hop's time is the wake of an idle thread or loop, which a FastAPI-style
manager that sends from the request's own task never pays.
Publishes are paced as in scenario (c), so both sides are idle when each starts.

    python bench/thread_hop.py [--publishes 1000] [--gap-ms 10] [--loop asyncio|uvloop]
"""

import argparse
import asyncio
import queue
import threading
import time
from concurrent.futures import Future

from run import percentile

Hop = tuple[int, "Future[int]"]  # when the loop handed it over; completed with the writer's end


def writer(waiting: "queue.SimpleQueue[Hop | None]", started: dict[int, int]) -> None:
    while (item := waiting.get()) is not None:
        handed_over, done = item
        started[handed_over] = time.perf_counter_ns()
        done.set_result(time.perf_counter_ns())


async def measure(publishes: int, gap_s: float) -> tuple[list[int], list[int]]:
    waiting: queue.SimpleQueue[Hop | None] = queue.SimpleQueue()
    started: dict[int, int] = {}
    thread = threading.Thread(target=writer, args=(waiting, started), daemon=True)
    thread.start()
    to_writer: list[int] = []
    back: list[int] = []
    for _ in range(publishes):
        await asyncio.sleep(gap_s)
        done: Future[int] = Future()
        handed_over = time.perf_counter_ns()
        waiting.put((handed_over, done))
        writer_end = await asyncio.wrap_future(done)
        back_on_loop = time.perf_counter_ns()
        to_writer.append((started.pop(handed_over) - handed_over) // 1000)
        back.append((back_on_loop - writer_end) // 1000)
    waiting.put(None)
    thread.join(5)
    return sorted(to_writer), sorted(back)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=1000)
    parser.add_argument("--gap-ms", type=float, default=10.0, help="pause between publishes")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    to_writer, back = asyncio.run(measure(args.publishes, args.gap_ms / 1000))
    print(f"{args.publishes} hops each way, {args.gap_ms:g} ms apart, {args.loop} loop")
    print("| hop | p50 µs | p90 µs | p99 µs |")
    print("|---|---:|---:|---:|")
    for name, values in (("loop → writer thread", to_writer), ("writer → loop", back)):
        cells = " | ".join(f"{percentile(values, q):,.0f}" for q in (0.50, 0.90, 0.99))
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
