"""Group commit: publishes made outside any transaction, stored many at a time.

Every publish that no transaction of the caller holds back (the ingest endpoint, the send
helpers called from async code or from sync code outside ``atomic``) goes to one writer thread.
While it commits a batch, the next publishes wait in its queue; it then takes them all (up to
``MAX_BATCH_EVENTS``) into one transaction: one commit, one fsync, a few statements per graph
for any number of callers. Numbers stay dense per graph, each caller's events keep their order
and stay together (the batch is the callers' lists one after the other), and a batch that fails
fails every caller in it with ``BatchNotStored``: it was one transaction, so nothing of it is
stored. Callers send what was stored once their batch has committed, never before.

The event loop never waits on the database: async callers await a future the writer thread
completes. The thread keeps its database connection (``close_old_connections`` between batches
drops a broken or expired one).

SQLite gets its WAL checkpoints off the publishing path too: left to itself it copies the
write-ahead log back into the database inside whichever commit finds it past 1,000 pages (that
commit takes milliseconds instead of a tenth of one). The writer checkpoints after handing a
batch back, every ``SQLITE_CHECKPOINT_EVERY`` events, so the log rarely reaches that size.
"""

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final

from django.db import OperationalError, close_old_connections, connection, connections

from executions import metrics
from executions.exceptions import BatchNotStored

logger = logging.getLogger(__name__)

# The most events one transaction takes; a single larger publish goes alone.
MAX_BATCH_EVENTS: Final = 5000
# Events stored between two checkpoints of SQLite's write-ahead log (~6 pages each).
SQLITE_CHECKPOINT_EVERY: Final = 50
# How long closing waits for the writer to finish what it holds.
CLOSE_TIMEOUT_SECONDS: Final = 30.0
# How long a batch may wait for SQLite's locks held by other connections before it fails.
LOCKED_RETRY_SECONDS: Final = 5.0
# A sync caller's wait for its batch; the writer never holds one nearly this long.
SYNC_WAIT_SECONDS: Final = 300.0

Store = Callable[[list[Any]], list[Any]]


@dataclass(slots=True)
class _Publish:
    items: list[Any]
    done: "Future[list[Any]]" = field(default_factory=Future)


_STOP: Final = object()


class Writers:
    """The process's writer thread and its queue; started by the first publish."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self._store: Store | None = None

    async def run(self, store: Store, items: list[Any]) -> list[Any]:
        """Store ``items`` with whatever else is waiting, in one transaction; return what
        ``store`` returned for them. Raises BatchNotStored when the batch failed."""
        publish = self._submit(store, items)
        return await asyncio.wrap_future(publish.done)

    def run_sync(self, store: Store, items: list[Any]) -> list[Any]:
        """The same, for a thread outside any transaction (blocks until its batch commits)."""
        return self._submit(store, items).done.result(SYNC_WAIT_SECONDS)

    def close(self) -> None:
        """Stop the writer thread once it has stored what it holds, and close its connection.

        For the end of a test session (a test database cannot be dropped while a writer keeps a
        connection to it) and anything else that must let go of the database; the next publish
        starts a new thread.
        """
        with self._starting:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(_STOP)
        thread.join(CLOSE_TIMEOUT_SECONDS)

    def _submit(self, store: Store, items: list[Any]) -> _Publish:
        publish = _Publish(list(items))
        with self._starting:
            if self._thread is None:
                self._store = store
                self._thread = threading.Thread(
                    target=self._write_forever, name="executions-writer", daemon=True
                )
                self._thread.start()
            self._queue.put(publish)
        return publish

    def _write_forever(self) -> None:
        sqlite = connection.vendor == "sqlite"
        since_checkpoint = 0
        try:
            while True:
                batch, stopping = self._next_batch()
                if batch:
                    stored = self._commit(batch)
                    if sqlite:
                        since_checkpoint += stored
                        if since_checkpoint >= SQLITE_CHECKPOINT_EVERY:
                            since_checkpoint = 0
                            _checkpoint_sqlite()
                if stopping:
                    return
        finally:
            connections.close_all()

    def _next_batch(self) -> tuple[list[_Publish], bool]:
        """Wait for a publish, then take every one already waiting, up to the batch's size."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch: list[_Publish] = [first]
        count = len(first.items)
        while count < MAX_BATCH_EVENTS:
            try:
                waiting = self._queue.get_nowait()
            except queue.Empty:
                break
            if waiting is _STOP:
                return batch, True
            batch.append(waiting)
            count += len(waiting.items)
        return batch, False

    def _commit(self, batch: Sequence[_Publish]) -> int:
        """Store a batch in one transaction; complete each caller's future. Returns the count."""
        items = [item for publish in batch for item in publish.items]
        try:
            stored = self._store_retrying_locks(items)
        except BaseException as exc:
            metrics.BATCHES_FAILED.inc()
            error = BatchNotStored(len(batch), len(items), exc)
            error.__cause__ = exc
            for publish in batch:
                _settle(publish.done, exception=error)
            return 0
        finally:
            # What database_sync_to_async does around each call, once per batch: drop a
            # connection that broke or outlived CONN_MAX_AGE.
            close_old_connections()
        metrics.BATCHES_STORED.inc()
        metrics.BATCH_EVENTS.observe(len(items))
        start = 0
        for publish in batch:
            end = start + len(publish.items)
            _settle(publish.done, result=stored[start:end])
            start = end
        return len(items)

    def _store_retrying_locks(self, items: list[Any]) -> list[Any]:
        """Store, trying again while SQLite reports a lock another connection holds for a moment
        (a shared-cache database's table lock, a busy timeout run out): the failed transaction
        rolled back whole, so trying again stores each event once."""
        assert self._store is not None
        deadline = time.monotonic() + LOCKED_RETRY_SECONDS
        delay = 0.001
        while True:
            try:
                return self._store(items)
            except OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                    raise
            close_old_connections()
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _settle(done: "Future[list[Any]]", result: Any = None, exception: Any = None) -> None:
    # A caller that gave up (a cancelled await) leaves a cancelled future: nothing to tell it.
    with contextlib.suppress(Exception):
        if exception is not None:
            done.set_exception(exception)
        else:
            done.set_result(result)


def _checkpoint_sqlite() -> None:
    try:
        with connection.cursor() as cursor:
            # PASSIVE: copies what it can without waiting for, or blocking, other connections.
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except Exception:
        logger.exception("SQLite checkpoint failed")
    finally:
        close_old_connections()


writers = Writers()
