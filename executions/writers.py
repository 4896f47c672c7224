"""The threads that store publishes made outside any transaction (the ingest endpoint).

Every ingested event waits here, so the path is lean: a plain executor hop (none of
sync_to_async's context copying and shielding) to threads that keep their database connections.

SQLite takes one writer at a time, so it gets one thread: several would only wait for its lock
in SQLite's sleeping busy handler. It also gets its WAL checkpoints off the publishing path:
left to itself, SQLite copies the write-ahead log back into the database inside whichever commit
finds it past 1,000 pages, and that commit, one in a few hundred, takes milliseconds instead of a
tenth of one. Here the writer thread checkpoints after a publish has been handed back, every
``SQLITE_CHECKPOINT_EVERY`` events, so the log rarely reaches that size. PostgreSQL needs none
of this and gets several threads, for publishers of different graphs to write at once.
"""

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.db import close_old_connections, connection, connections

logger = logging.getLogger(__name__)

# Writer threads for databases that take concurrent writers.
WRITER_THREADS = 4
# Events stored between two checkpoints of SQLite's write-ahead log (~6 pages each).
SQLITE_CHECKPOINT_EVERY = 50
# How long closing waits for every writer thread to take its turn (they finish their writes first).
CLOSE_TIMEOUT_SECONDS = 30


class Writers:
    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._sqlite = False
        self._threads = 0
        self._since_checkpoint = 0

    async def run[T](self, store: Callable[[Any], T], items: list[Any]) -> T:
        """Run ``store(items)`` in a writer thread and return what it returns."""
        pool = self._started()
        stored = await asyncio.get_running_loop().run_in_executor(
            pool, _with_connection_upkeep, store, items
        )
        if self._sqlite:
            self._since_checkpoint += len(items)
            if self._since_checkpoint >= SQLITE_CHECKPOINT_EVERY:
                self._since_checkpoint = 0
                pool.submit(_checkpoint_sqlite).add_done_callback(_log_failure)
        return stored

    def close(self) -> None:
        """Close every writer thread's database connection and stop the threads.

        For the end of a test session (a test database cannot be dropped while a writer keeps a
        connection to it) and anything else that must let go of the database; the next publish
        starts new threads.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # One task per thread: each waits for the others, so every thread runs exactly one.
        everyone = threading.Barrier(self._threads)
        for _ in range(self._threads):
            pool.submit(_close_connections, everyone)
        pool.shutdown(wait=True)

    def _started(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._sqlite = connection.vendor == "sqlite"
            self._threads = 1 if self._sqlite else WRITER_THREADS
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="executions-writer")
        return self._pool


def _with_connection_upkeep[T](store: Callable[[Any], T], items: list[Any]) -> T:
    try:
        return store(items)
    finally:
        # What database_sync_to_async does around each call, once: drop a connection that
        # broke or outlived CONN_MAX_AGE, and have the next use check its health.
        close_old_connections()


def _close_connections(everyone: threading.Barrier) -> None:
    everyone.wait(timeout=CLOSE_TIMEOUT_SECONDS)
    connections.close_all()


def _checkpoint_sqlite() -> None:
    try:
        with connection.cursor() as cursor:
            # PASSIVE: copies what it can without waiting for, or blocking, other connections.
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        close_old_connections()


def _log_failure(done: "Future[None]") -> None:
    if done.exception() is not None:
        logger.error("SQLite checkpoint failed", exc_info=done.exception())


writers = Writers()
