"""The ingest's SQLite writer: checkpoints its write-ahead log after publishes, not inside them.

Left to itself, SQLite copies the log back into the database inside whichever commit finds it
past 1,000 pages, and one publish in a few hundred pays for the copy. The app raises that
threshold on every connection, and the writer thread checkpoints every few hundred events
instead, after handing the publish back: the log never gets near the threshold.
"""

import asyncio
import http.client
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections

from executions.events import send_execution_results
from executions.writers import SQLITE_AUTOCHECKPOINT_PAGES, writers
from tests.conftest import make_result
from tests.servers import INGEST_TOKEN, DaphneServer, prepare_site

# More than SQLITE_AUTOCHECKPOINT_PAGES' worth of single-event commits (~8 pages each): without
# the writer's checkpoints the log would reach it.
PUBLISHES = 1500


def publish_one_by_one(port: int, count: int) -> list[int]:
    """POST `count` single events on one keep-alive connection; their statuses."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}
    statuses = []
    try:
        for index in range(count):
            body: dict[str, Any] = make_result("writers", node_exec_id=str(index)).model_dump(
                mode="json"
            )
            connection.request("POST", "/api/executions", json.dumps(body), headers)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        connection.close()
    return statuses


async def test_the_write_ahead_log_stays_far_below_the_automatic_checkpoint_size(
    tmp_path: Path,
) -> None:
    site = prepare_site(tmp_path)
    wal = site.database.with_name(site.database.name + "-wal")
    with DaphneServer(site.env, tmp_path, "writers") as server:
        statuses = await asyncio.to_thread(publish_one_by_one, server.port, PUBLISHES)
        server.assert_running()
        # While the server runs: its last connection to close removes the log.
        wal_bytes = wal.stat().st_size

    assert statuses == [202] * PUBLISHES
    with sqlite3.connect(site.database) as database:
        page_size = database.execute("PRAGMA page_size").fetchone()[0]
        stored = database.execute(
            "SELECT COUNT(*), MIN(seq), MAX(seq) FROM executions_executionevent "
            "WHERE graph_id = 'writers'"
        ).fetchone()
    assert stored == (PUBLISHES, 1, PUBLISHES)
    wal_pages = wal_bytes / page_size
    print(f"writer figures: publishes={PUBLISHES} wal_pages={wal_pages:.0f}")
    assert wal_pages < SQLITE_AUTOCHECKPOINT_PAGES / 2
    # Well past SQLite's default threshold (a log checkpointed at 1,000 pages stays a few pages
    # above it): no commit checkpointed on its way, the writer did between publishes.
    assert wal_pages > 2000


def writer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("executions-writer")]


async def publish_one() -> list[int]:
    return await send_execution_results([make_result("closing")], outside_any_transaction=True)


@pytest.mark.django_db(transaction=True)
async def test_closed_writers_let_go_of_the_database_and_the_next_publish_starts_afresh() -> None:
    first = await publish_one()
    assert writer_threads()

    await asyncio.to_thread(writers.close)

    assert writer_threads() == []
    assert (first, await publish_one()) == ([1], [2])


@pytest.mark.django_db
def test_every_new_connection_leaves_the_checkpoints_to_the_writer() -> None:
    """A view's commit or a publish inside the caller's transaction must not copy the log back
    either: SQLite's threshold is per connection, so each new one gets the writer's."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's setting")
    another = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with another.cursor() as cursor:
            cursor.execute("PRAGMA wal_autocheckpoint")
            (threshold,) = cursor.fetchone()
    finally:
        another.close()

    assert threshold == SQLITE_AUTOCHECKPOINT_PAGES
