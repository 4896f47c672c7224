"""Group commit: publishes made at the same moment outside any transaction share one.

The writer thread (executions.writers) takes every publish waiting for it into one transaction:
numbers stay dense per graph, each publisher's events keep their order, and a batch the database
refuses fails every publisher in it, with nothing of it stored.
"""

import asyncio
import json
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection, transaction

from executions import catchup, history, metrics, writers
from executions.events import send_execution_results, send_execution_results_sync
from executions.exceptions import BatchNotStored
from executions.fanout import YIELD_EVERY
from executions.models import ExecutionEvent, GraphStream
from executions.writers import MAX_BATCH_EVENTS
from tests.conftest import make_result, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

INGEST_TOKEN = "ingest-secret"
POISON = "poison"  # a graph id the database refuses, by a trigger of its own


def batches_stored() -> float:
    return metrics.BATCHES_STORED._value.get()


def stored_numbers(graph_id: str) -> list[tuple[int, str]]:
    rows = ExecutionEvent.objects.filter(graph_id=graph_id).order_by("seq")
    return [(seq, frame) for seq, frame in rows.values_list("seq", "frame")]


def node_exec_ids(graph_id: str) -> list[str]:
    rows = ExecutionEvent.objects.filter(graph_id=graph_id).order_by("seq")
    return [
        json.loads(frame)["data"]["node_exec_id"] for frame in rows.values_list("frame", flat=True)
    ]


@pytest.fixture
def poisoned_graph(transactional_db: None) -> Iterator[str]:
    """A trigger that makes the database refuse any event of graph POISON: a real failure."""
    table = ExecutionEvent._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'poisoned event refused'; END; $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER refuse_poison BEFORE INSERT ON {table} FOR EACH ROW "
                f"WHEN (NEW.graph_id = '{POISON}') EXECUTE FUNCTION refuse_poison()"
            )
        else:
            cursor.execute(
                f"CREATE TRIGGER refuse_poison BEFORE INSERT ON {table} "
                f"WHEN NEW.graph_id = '{POISON}' "
                "BEGIN SELECT RAISE(ABORT, 'poisoned event refused'); END"
            )
    yield POISON
    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER refuse_poison"
            + (f" ON {table}" if connection.vendor == "postgresql" else "")
        )
        if connection.vendor == "postgresql":
            cursor.execute("DROP FUNCTION refuse_poison()")


async def test_fifty_concurrent_publishers_share_a_few_transactions_and_numbers_stay_dense() -> (
    None
):
    before = batches_stored()

    async def publish(index: int) -> list[int]:
        graph_id = "even" if index % 2 == 0 else "odd"
        own = [make_result(graph_id, node_exec_id=f"{index}-{n}") for n in range(3)]
        return await send_execution_results(own)

    numbers = await asyncio.gather(*(publish(index) for index in range(50)))

    transactions = batches_stored() - before
    assert transactions <= 5, f"{transactions:.0f} transactions for 50 concurrent publishers"
    for graph_id, first in (("even", 0), ("odd", 1)):
        mine = [numbers[index] for index in range(first, 50, 2)]
        # Each publisher's three events: consecutive numbers, in its order.
        assert all(seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2] for seqs in mine)
        assert sorted(seq for seqs in mine for seq in seqs) == list(range(1, 76))
        ids = await sync_to_async(node_exec_ids)(graph_id)
        by_seq = {
            seq: f"{index}-{n}"
            for index, seqs in zip(range(first, 50, 2), mine, strict=True)
            for n, seq in enumerate(seqs)
        }
        assert ids == [by_seq[seq] for seq in range(1, 76)]


async def test_publishers_of_one_batch_reach_a_subscriber_in_number_order_from_the_live_stream(
    connect: Any, alice_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches larger than a hand-out's turn: each publisher yields to the loop midway.
    history_reads: list[tuple[int, int]] = []
    read_from_history = catchup.missing_before

    async def counted(graph_id: str, delivered: int, seq: int) -> list[Any]:
        if seq > delivered + 1:  # a gap: what lies between is read from the history
            history_reads.append((delivered, seq))
        return await read_from_history(graph_id, delivered, seq)

    monkeypatch.setattr(catchup, "missing_before", counted)
    communicator = await connect(alice_token)
    assert (await subscribe(communicator, "test_graph"))["success"] is True
    size, publishers = 3 * YIELD_EVERY, 6

    async def publish(index: int) -> list[int]:
        own = [make_result(node_exec_id=f"{index}-{n}") for n in range(size)]
        return await send_execution_results(own)

    await asyncio.gather(*(publish(index) for index in range(publishers)))

    received = [
        (await communicator.receive_json_from(timeout=5))["data"]["node_exec_id"]
        for _ in range(size * publishers)
    ]
    assert received == await sync_to_async(node_exec_ids)("test_graph")
    assert history_reads == []


async def test_publishers_in_many_threads_get_dense_numbers_in_their_own_order() -> None:
    start = threading.Barrier(20)
    numbers: dict[int, list[int]] = {}

    def publish(index: int) -> None:
        start.wait(timeout=10)
        own = [make_result("threads", node_exec_id=f"{index}-{n}") for n in range(5)]
        numbers[index] = send_execution_results_sync(own)

    threads = [threading.Thread(target=publish, args=(index,)) for index in range(20)]

    def run_all() -> None:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    await asyncio.to_thread(run_all)

    assert sorted(seq for seqs in numbers.values() for seq in seqs) == list(range(1, 101))
    assert all(seqs == sorted(seqs) for seqs in numbers.values())
    ids = await sync_to_async(node_exec_ids)("threads")
    assert all(
        ids[seq - 1] == f"{index}-{n}"
        for index, seqs in numbers.items()
        for n, seq in enumerate(seqs)
    )


async def test_a_refused_batch_fails_every_publisher_in_it_and_stores_nothing_of_it(
    poisoned_graph: str,
) -> None:
    # A publish of a whole batch's size goes alone: while it commits, the next ones gather.
    whole_batch = [make_result("big", node_exec_id=str(n)) for n in range(MAX_BATCH_EVENTS)]
    first = asyncio.ensure_future(send_execution_results(whole_batch))
    await asyncio.sleep(0)  # its turn to be queued first
    together = [
        send_execution_results([make_result(graph_id)])
        for graph_id in ("a", "b", poisoned_graph, "c")
    ]

    outcomes = await asyncio.gather(first, *together, return_exceptions=True)

    assert outcomes[0] == list(range(1, MAX_BATCH_EVENTS + 1))
    for failed in outcomes[1:]:
        assert isinstance(failed, BatchNotStored), failed
        assert "Nothing of the batch was stored or sent" in str(failed)
        assert "poisoned event refused" in str(failed)
        assert (failed.publishes, failed.events) == (4, 4)
    heads = await sync_to_async(lambda: dict(GraphStream.objects.values_list("graph_id", "head")))()
    assert heads == {"big": MAX_BATCH_EVENTS}
    # Nothing half-stored: the next publish of "a" is its first.
    assert await send_execution_results([make_result("a")]) == [1]


async def test_a_refused_large_batch_stores_nothing_of_any_graph(poisoned_graph: str) -> None:
    # Large enough for PostgreSQL's COPY path: the refusal still undoes the whole transaction.
    many = history.COPY_FROM_ROWS
    results = [
        make_result(graph_id, node_exec_id=str(n))
        for n in range(many)
        for graph_id in ("a", poisoned_graph)
    ]

    with pytest.raises(BatchNotStored, match="poisoned event refused"):
        await send_execution_results(results)

    assert await sync_to_async(stored_numbers)("a") == []
    assert await send_execution_results([make_result("a")]) == [1]


async def test_the_ingest_endpoint_answers_a_refused_batch_with_503(
    application: Any, settings: Any, channel_layer: Any, poisoned_graph: str
) -> None:
    settings.EXECUTIONS_INGEST_TOKEN = INGEST_TOKEN
    body = make_result(poisoned_graph).model_dump(mode="json")
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        response = await http.post(
            "/api/executions", json=body, headers={"Authorization": f"Bearer {INGEST_TOKEN}"}
        )

    assert response.status_code == 503
    assert response.json()["error"].startswith("Not stored: the database refused the batch")
    assert await sync_to_async(stored_numbers)(poisoned_graph) == []


async def test_a_publisher_cancelled_while_its_batch_is_stored_still_has_its_events_sent(
    settings: Any, connect: Any, alice_token: str
) -> None:
    settings.EXECUTIONS_SWEEP_SECONDS = 60  # sent by the publish itself, not found by a sweep
    client = await connect(token=alice_token)
    await client.send_json_to({"method": "subscribe", "data": {"graph_id": "test_graph"}})
    assert (await client.receive_json_from(timeout=5))["success"] is True

    publish = asyncio.ensure_future(send_execution_results([make_result("test_graph")]))
    await asyncio.sleep(0)  # handed to the writer
    publish.cancel()  # the caller hangs up, as an ingest client may

    event = await client.receive_json_from(timeout=5)
    assert (event["method"], event["data"]["graph_id"]) == ("execution_event", "test_graph")
    assert publish.cancelled()
    assert len(await sync_to_async(stored_numbers)("test_graph")) == 1


async def test_a_batch_wakes_each_waiting_event_loop_once_for_all_of_its_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    wakes: list[Any] = []
    wake = loop.call_soon_threadsafe

    def counted_wake(callback: Any, *args: Any) -> Any:
        wakes.append(callback)
        return wake(callback, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted_wake)
    callers: list[asyncio.Future[list[int]]] = [loop.create_future() for _ in range(20)]
    outcomes = [
        (writers._Publish([index], done, loop), [index], None) for index, done in enumerate(callers)
    ]
    settling = threading.Thread(target=writers._settle_all, args=(outcomes,))
    settling.start()

    assert await asyncio.wait_for(asyncio.gather(*callers), 5) == [[i] for i in range(20)]
    settling.join(5)
    assert len(wakes) == 1


def test_a_batch_never_takes_more_than_max_batch_events() -> None:
    waiting: queue.SimpleQueue[Any] = queue.SimpleQueue()
    sizes = [MAX_BATCH_EVENTS // 2 - 1, MAX_BATCH_EVENTS // 2 - 1, 3, 1]
    for size in sizes:
        waiting.put(writers._Publish([None] * size, Future()))
    held: list[Any] = []

    first, _ = writers._next_batch(waiting, held)
    second, _ = writers._next_batch(waiting, held)

    # The third publish would take the first batch past the limit: it starts the second.
    assert [len(publish.items) for publish in first] == sizes[:2]
    assert [len(publish.items) for publish in second] == sizes[2:]
    assert held == []


async def test_a_row_lock_held_by_a_long_transaction_fails_its_batch_within_the_lock_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite's writer lock is waited for a bound")
    monkeypatch.setattr(writers, "LOCK_TIMEOUT_SECONDS", 0.5)
    assert await send_execution_results([make_result("locked")]) == [1]
    locked, release = threading.Event(), threading.Event()

    def hold_the_stream_row() -> None:
        try:
            with transaction.atomic():
                GraphStream.objects.select_for_update().get(graph_id="locked")
                locked.set()
                release.wait(timeout=30)
        finally:
            connection.close()  # this thread's own

    holder = threading.Thread(target=hold_the_stream_row)
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 10)
        started = asyncio.get_running_loop().time()
        with pytest.raises(BatchNotStored, match="lock timeout"):
            await send_execution_results([make_result("locked")])
        waited = asyncio.get_running_loop().time() - started
        # Other graphs go on being published while the row stays locked.
        assert await send_execution_results([make_result("free")]) == [1]
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 30)

    assert waited < 5
    assert await send_execution_results([make_result("locked")]) == [2]


async def test_publishes_racing_a_close_of_the_writer_all_complete() -> None:
    def publish_and_close() -> list[int]:
        numbers: list[int] = []
        publishers = [
            threading.Thread(
                target=lambda: numbers.extend(send_execution_results_sync([make_result("race")]))
            )
            for _ in range(40)
        ]
        for index, publisher in enumerate(publishers):
            publisher.start()
            if index % 4 == 0:
                writers.writers.close()
        for publisher in publishers:
            publisher.join(timeout=20)
        assert not any(publisher.is_alive() for publisher in publishers)
        return numbers

    async with asyncio.timeout(20):  # nobody waits on a writer that was told to stop
        numbers = await asyncio.to_thread(publish_and_close)

    assert sorted(numbers) == list(range(1, 41))


async def test_the_writer_stores_the_same_rows_as_a_callers_own_transaction() -> None:
    # The writer goes straight through the driver (history.record_alone); a caller's transaction
    # through Django's cursor (history.record). Same numbers, same rows.
    results = [make_result(node_exec_id=f"n{n}") for n in range(3)]

    def in_a_transaction() -> list[int]:
        with transaction.atomic():
            return send_execution_results_sync(
                [result.model_copy(update={"graph_id": "caller"}) for result in results]
            )

    by_caller = await sync_to_async(in_a_transaction)()
    by_writer = await send_execution_results(
        [result.model_copy(update={"graph_id": "writer"}) for result in results]
    )

    assert by_caller == by_writer == [1, 2, 3]
    caller = await sync_to_async(stored_numbers)("caller")
    writer = await sync_to_async(stored_numbers)("writer")
    assert [(seq, frame.replace('"caller"', '"writer"')) for seq, frame in caller] == writer


def test_a_batch_whose_connection_broke_fails_with_the_error_that_broke_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The rollback fails on the broken connection and closes it; closing the cursor afterwards
    # fails too, and that must not take the place of the batch's own error.
    def breaks(cursor: Any, results: Any, placeholder: str) -> Any:
        connection.connection.close()
        raise connection.Database.OperationalError("disk I/O error")

    monkeypatch.setattr(history, "_number_and_insert", breaks)
    try:
        with pytest.raises(OperationalError, match="disk I/O error"):
            history.record_alone([make_result("broken")])
    finally:
        connection.close()
    monkeypatch.undo()

    assert [event.seq for event in history.record_alone([make_result("broken")])] == [1]


async def test_a_writer_connection_that_died_is_replaced_before_its_next_batch() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("a server-side disconnect is PostgreSQL's")
    backends: list[int] = []
    lock_timeouts: list[str] = []

    def store(items: list[Any]) -> list[Any]:
        stored = history.record_alone(items)
        backends.append(connection.connection.info.backend_pid)
        with connection.cursor() as cursor:
            cursor.execute("SHOW lock_timeout")
            lock_timeouts.append(cursor.fetchone()[0])
        return stored

    def terminate(pid: int) -> None:  # as a database restart would
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])  # waits

    writer = writers.Writers(store)
    try:
        assert await asyncio.to_thread(writer.run_sync, [make_result("restarted")])
        await sync_to_async(terminate)(backends[0])

        seqs = await asyncio.to_thread(writer.run_sync, [make_result("restarted")])
    finally:
        await asyncio.to_thread(writer.close)

    assert [event.seq for event in seqs] == [2]
    assert backends[1] != backends[0]
    assert lock_timeouts == ["5s", "5s"]  # the new connection waits no longer for row locks
