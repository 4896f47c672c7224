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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.db import close_old_connections, connection

logger = logging.getLogger(__name__)

# Writer threads for databases that take concurrent writers.
WRITER_THREADS = 4
# Events stored between two checkpoints of SQLite's write-ahead log (~6 pages each).
SQLITE_CHECKPOINT_EVERY = 50


class Writers:
    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._sqlite = False
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

    def _started(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._sqlite = connection.vendor == "sqlite"
            threads = 1 if self._sqlite else WRITER_THREADS
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="executions-writer")
        return self._pool


def _with_connection_upkeep[T](store: Callable[[Any], T], items: list[Any]) -> T:
    try:
        return store(items)
    finally:
        # What database_sync_to_async does around each call, once: drop a connection that
        # broke or outlived CONN_MAX_AGE, and have the next use check its health.
        close_old_connections()


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
