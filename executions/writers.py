"""Group commit: publishes made outside any transaction, stored many at a time.

Every publish that no transaction of the caller holds back (the ingest endpoint, the send
helpers called from async code or from sync code outside ``atomic``) goes to one writer thread.
While it commits a batch, the next publishes wait in its queue; it then takes them all (up to
``MAX_BATCH_EVENTS``) into one transaction: one commit, one fsync, a few statements per graph
for any number of callers. Numbers stay dense per graph, each caller's events keep their order
and stay together (the batch is the callers' lists one after the other), and a batch that fails
fails every caller in it with ``BatchNotStored``: it was one transaction, so nothing of it is
stored. Callers send what was stored once their batch has committed, never before.

The event loop never waits on the database: async callers await a future of their own loop,
which the writer completes there, one wake of each loop for all of a batch's callers. The
thread keeps its database connection (``close_old_connections`` between batches drops a broken
or expired one). On PostgreSQL that connection waits at most
``LOCK_TIMEOUT_SECONDS`` for a row lock (a graph's stream row held by a long transaction of
the caller's own code): the batch then fails, instead of every publish of the process waiting
behind it. A thread that died is replaced by the next publish.

SQLite gets its WAL checkpoints off the publishing path too: left to itself it copies the
write-ahead log back into the database inside whichever commit finds it past 1,000 pages (that
commit takes milliseconds instead of a tenth of one). The writer checkpoints after handing a
batch back, every ``SQLITE_CHECKPOINT_EVERY`` events, and every connection to the database
gets an automatic threshold of ``SQLITE_AUTOCHECKPOINT_PAGES``, past what the log reaches
between two of them, so that no commit (the writer's, a view's, a publish inside the caller's
transaction) copies the log on its way. Checkpoints are rare on purpose: once one has copied the
whole log, the next commit starts the log over and syncs its new header to disk, a publish that
takes three times as long as the others.
"""

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

from django.db import (
    DEFAULT_DB_ALIAS,
    OperationalError,
    close_old_connections,
    connection,
    connections,
)
from django.db.backends.signals import connection_created
from django.dispatch import receiver

from executions import history, metrics
from executions.exceptions import BatchNotStored

logger = logging.getLogger(__name__)

# The most events one transaction takes; a single larger publish goes alone.
MAX_BATCH_EVENTS: Final = 5000
# Events stored between two checkpoints of SQLite's write-ahead log (~8 pages each when
# published one by one): one publish in 400 pays the restarted log's sync, beyond the p99.
SQLITE_CHECKPOINT_EVERY: Final = 400
# Every connection's automatic checkpoint, well past what SQLITE_CHECKPOINT_EVERY leaves in the
# log (about 13 MB of 4 KiB pages), so that none runs inside a commit. With no publishes at all
# the log grows to this size (40 MB) before one commit copies it back.
SQLITE_AUTOCHECKPOINT_PAGES: Final = 10_000
# How long closing waits for the writer to finish what it holds.
CLOSE_TIMEOUT_SECONDS: Final = 30.0
# How long a batch may wait for SQLite's locks held by other connections before it fails.
LOCKED_RETRY_SECONDS: Final = 5.0
# How long a batch may wait for a PostgreSQL row lock before it fails (lock_timeout).
LOCK_TIMEOUT_SECONDS = 5.0
# A sync caller's wait for its batch; the writer never holds one nearly this long.
SYNC_WAIT_SECONDS: Final = 300.0

Store = Callable[[list[Any]], list[Any]]


@dataclass(slots=True)
class _Publish:
    items: list[Any]
    # A thread's publish: a concurrent future, and no loop. A coroutine's: a future of its event
    # loop, and that loop, where the future is completed (asyncio futures are not thread-safe).
    done: "Future[list[Any]] | asyncio.Future[list[Any]]"
    loop: asyncio.AbstractEventLoop | None = None


# A publish, and what its caller gets: the stored events, or the exception.
Outcome = tuple[_Publish, Any, BaseException | None]


_STOP: Final = object()
# What a writer thread has set on its database connection.
_writer_thread = threading.local()


@dataclass(slots=True)
class _Writer:
    """One writer thread and the queue only it reads."""

    thread: threading.Thread
    queue: "queue.SimpleQueue[Any]"


class Writers:
    """The process's writer thread and its queue; started by the first publish."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._writer: _Writer | None = None
        self._changing = threading.Lock()

    def submit(self, items: list[Any]) -> "asyncio.Future[list[Any]]":
        """Hand ``items`` to the writer, which stores them with whatever else is waiting in one
        transaction; the future, of the running event loop, gets what the store returned for
        them, or BatchNotStored when the batch failed. The writer may start before the caller
        next yields."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        self._put(_Publish(list(items), done, loop))
        return done

    def run_sync(self, items: list[Any]) -> list[Any]:
        """The same, for a thread outside any transaction (blocks until its batch commits)."""
        done: Future[list[Any]] = Future()
        self._put(_Publish(list(items), done))
        return done.result(SYNC_WAIT_SECONDS)

    def close(self) -> None:
        """Stop the writer thread once it has stored what it holds, and close its connection.

        For the end of a test session (a test database cannot be dropped while a writer keeps a
        connection to it) and anything else that must let go of the database; the next publish
        starts a new thread, with a queue of its own.
        """
        with self._changing:
            writer, self._writer = self._writer, None
            if writer is None:
                return
            writer.queue.put(_STOP)
        writer.thread.join(CLOSE_TIMEOUT_SECONDS)

    def _put(self, publish: _Publish) -> None:
        with self._changing:
            writer = self._writer
            if writer is None or not writer.thread.is_alive():
                if writer is not None:
                    logger.error("The writer thread had stopped: starting another one.")
                    _fail_waiting(writer.queue)
                writer = self._writer = self._start()
            writer.queue.put(publish)

    def _start(self) -> _Writer:
        waiting: queue.SimpleQueue[Any] = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._write_forever, args=(waiting,), name="executions-writer", daemon=True
        )
        thread.start()
        return _Writer(thread, waiting)

    def _write_forever(self, waiting: "queue.SimpleQueue[Any]") -> None:
        sqlite = connection.vendor == "sqlite"
        since_checkpoint = 0
        held: list[_Publish] = []  # taken from the queue, for the next batch
        try:
            while True:
                batch, stopping = _next_batch(waiting, held)
                if batch:
                    try:
                        stored = self._commit(batch)
                    except Exception:
                        # Never let the thread die with callers waiting on it.
                        logger.exception("The writer failed a batch")
                        continue
                    if sqlite:
                        since_checkpoint += stored
                        if since_checkpoint >= SQLITE_CHECKPOINT_EVERY:
                            since_checkpoint = 0
                            _checkpoint_sqlite()
                if stopping:
                    return
        finally:
            connections.close_all()

    def _commit(self, batch: Sequence[_Publish]) -> int:
        """Store a batch in one transaction; complete each caller's future. Returns the count."""
        items = [item for publish in batch for item in publish.items]
        try:
            stored = self._store_retrying_locks(items)
        except Exception as exc:
            metrics.BATCHES_FAILED.inc()
            error = BatchNotStored(len(batch), len(items), exc)
            error.__cause__ = exc
            _settle_all([(publish, None, error) for publish in batch])
            return 0
        finally:
            _drop_stale_connection()
        metrics.BATCHES_STORED.inc()
        metrics.BATCH_EVENTS.observe(len(items))
        outcomes: list[Outcome] = []
        start = 0
        for publish in batch:
            end = start + len(publish.items)
            outcomes.append((publish, stored[start:end], None))
            start = end
        _settle_all(outcomes)
        return len(items)

    def _store_retrying_locks(self, items: list[Any]) -> list[Any]:
        """Store, trying again while SQLite reports a lock another connection holds for a moment
        (a shared-cache database's table lock, a busy timeout run out): the failed transaction
        rolled back whole, so trying again stores each event once."""
        deadline = time.monotonic() + LOCKED_RETRY_SECONDS
        delay = 0.001
        while True:
            try:
                _limit_lock_waits()
                return self._store(items)
            except OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                    raise
            _drop_stale_connection()
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _next_batch(
    waiting: "queue.SimpleQueue[Any]", held: list[_Publish]
) -> tuple[list[_Publish], bool]:
    """Wait for a publish, then take every one already waiting while the batch stays within
    MAX_BATCH_EVENTS (a publish that would pass it is held for the next batch)."""
    first = held.pop() if held else waiting.get()
    if first is _STOP:
        return [], True
    batch: list[_Publish] = [first]
    count = len(first.items)
    while count < MAX_BATCH_EVENTS:
        try:
            publish = waiting.get_nowait()
        except queue.Empty:
            break
        if publish is _STOP:
            return batch, True
        if count + len(publish.items) > MAX_BATCH_EVENTS:
            held.append(publish)
            break
        batch.append(publish)
        count += len(publish.items)
    return batch, False


def _limit_lock_waits() -> None:
    """On PostgreSQL, bound how long the writer's statements wait for a lock (once per
    connection: the session keeps the setting)."""
    if connection.vendor != "postgresql":
        return
    # A connection that died since the last batch is replaced here, not later in the store:
    # the new one gets the setting too.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    setting = (connection.connection, LOCK_TIMEOUT_SECONDS)
    if getattr(_writer_thread, "lock_timeout", None) == setting:
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {int(LOCK_TIMEOUT_SECONDS * 1000)}")
    _writer_thread.lock_timeout = setting


@receiver(connection_created)
def _leave_checkpoints_to_the_writer(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Raise a new SQLite connection's automatic checkpoint threshold (a per-connection
    setting) past what the writer lets the log reach, for the database the app stores in."""
    if connection.vendor == "sqlite" and connection.alias == DEFAULT_DB_ALIAS:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_AUTOCHECKPOINT_PAGES}")


def _drop_stale_connection() -> None:
    """What database_sync_to_async does around each call, once per batch: drop a connection
    that broke or outlived CONN_MAX_AGE (never raising: the writer must go on)."""
    try:
        close_old_connections()
    except Exception:
        logger.exception("Closing the writer's database connection failed")


def _fail_waiting(waiting: "queue.SimpleQueue[Any]") -> None:
    """Fail the publishes a dead thread left in its queue (none may wait forever)."""
    error = RuntimeError("the writer thread stopped before storing this publish")
    failed: list[Outcome] = []
    while True:
        try:
            publish = waiting.get_nowait()
        except queue.Empty:
            break
        if publish is not _STOP:
            failed.append((publish, None, BatchNotStored(1, len(publish.items), error)))
    _settle_all(failed)


def _settle_all(outcomes: Sequence[Outcome]) -> None:
    """Complete each caller's future: a thread's right away, a coroutine's on its event loop,
    with one wake of each loop for all of its callers (a wake costs the writer a system call and
    the loop a turn; a batch of single-event requests holds dozens of callers)."""
    on_loops: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        loop = outcome[0].loop
        if loop is None:
            _settle(outcome)
        else:
            on_loops.setdefault(loop, []).append(outcome)
    for loop, settled in on_loops.items():
        try:
            loop.call_soon_threadsafe(_settle_each, settled)
        except RuntimeError:
            pass  # a closed loop: nobody is waiting there any more
        except Exception:
            # Never leave the other loops' callers waiting for one that failed.
            logger.exception("Handing a batch's outcome back to an event loop failed")


def _settle_each(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        _settle(outcome)


def _settle(outcome: Outcome) -> None:
    publish, result, exception = outcome
    # A caller that gave up (a cancelled await) leaves a cancelled future: nothing to tell it.
    with contextlib.suppress(Exception):
        if exception is not None:
            publish.done.set_exception(exception)
        else:
            publish.done.set_result(result)


def _checkpoint_sqlite() -> None:
    try:
        with connection.cursor() as cursor:
            # PASSIVE: copies what it can without waiting for, or blocking, other connections.
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except Exception:
        logger.exception("SQLite checkpoint failed")
    finally:
        _drop_stale_connection()


writers = Writers(history.record_alone)
