"""Durable per-graph history: numbering, storing, reading back and pruning published events.

Every function here is synchronous database code; async callers go through database_sync_to_async.
"""

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.db.models import Field, Max, Min, Model
from django.utils import timezone

from executions.channels import Kind
from executions.models import ExecutionEvent, GraphStream
from executions.schemas import (
    ExecutionResult,
    GraphExecutionEvent,
    Methods,
    NodeExecutionEvent,
    Publishable,
    WsMessage,
    execution_event_frame,
)


class StoredEvent(NamedTuple):
    """A stored event as it is sent: its graph, number and frame (immutable; a named tuple,
    built in a third of a frozen dataclass's time, once per event of every publish)."""

    graph_id: str
    seq: int
    frame: str
    kind: str = Kind.RESULT
    graph_exec_id: str = ""
    user_id: str = ""  # of a node event published with one; empty for the others

    def result(self) -> dict[str, Any]:
        """The execution result (or graph event), as JSON data, that the frame carries."""
        data: dict[str, Any] = json.loads(self.frame)["data"]
        return data

    def message(self) -> dict[str, Any]:
        """The event as the fan-out hands it out (see fanout.layer_event)."""
        return {
            "graph_id": self.graph_id,
            "seq": self.seq,
            "frame": self.frame,
            "kind": self.kind,
            "graph_exec_id": self.graph_exec_id,
            "user_id": self.user_id,
        }


# The columns a StoredEvent is read back from, after graph_id.
_STORED_COLUMNS = ("seq", "frame", "kind", "graph_exec_id", "user_id")


class _Entry(NamedTuple):
    """What is stored of one published item besides its graph and number."""

    graph_exec_id: str
    node_id: str
    status: str
    kind: str
    user_id: str
    frame: str


def _entry(item: Publishable) -> _Entry:
    # A plain result first, by its exact type: pydantic's isinstance takes a tenth of a
    # microsecond a check, and nearly every publish is of results.
    if type(item) is not ExecutionResult:
        if isinstance(item, GraphExecutionEvent):
            frame = WsMessage(
                method=Methods.GRAPH_EXECUTION_EVENT, data=item.model_dump()
            ).model_dump_json()
            return _Entry(item.id, "", item.status.value, Kind.GRAPH, item.user_id, frame)
        if isinstance(item, NodeExecutionEvent):
            frame = execution_event_frame(item.result())
            return _Entry(
                item.graph_exec_id, item.node_id, item.status.value, Kind.NODE, item.user_id, frame
            )
    frame = execution_event_frame(item)
    return _Entry(item.graph_exec_id, item.node_id, item.status.value, Kind.RESULT, "", frame)


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a graph's retained history starts and ends."""

    head: int  # last sequence number handed out (0: nothing published yet)
    oldest: int  # first retained sequence number (head + 1 when nothing is retained)

    def is_truncated_after(self, since: int) -> bool:
        """Whether events after `since` are missing from the retained history.

        A position past the head comes from another history (a reset database), so everything
        the client holds is in doubt: that is reported as a gap too.
        """
        return since < self.oldest - 1 or since > self.head

    def replay_start(self, since: int) -> int:
        """The sequence number after which a replay for a client at `since` begins."""
        return since if since <= self.head else self.oldest - 1

    def describe(self, truncated: bool) -> dict[str, int | bool]:
        return {"head": self.head, "oldest": self.oldest, "truncated": truncated}


def record(results: Sequence[Publishable]) -> list[StoredEvent]:
    """Number and store results and events inside the caller's transaction (or a new one).

    Returns the stored events in the order of `results`; each graph's numbers follow that order.
    This is every publish's hot path, so it speaks SQL directly: two statements per graph
    instead of the ORM's four, and no model instances (a third of the time it used to take).
    """
    with transaction.atomic(), connection.cursor() as cursor:
        return _number_and_insert(cursor, results, _DJANGO_PLACEHOLDER)


def record_alone(results: Sequence[Publishable]) -> list[StoredEvent]:
    """The same in a transaction of its own, straight through the database driver.

    For the writer thread, which only ever stores outside any transaction, on a connection of
    its own. Django's atomic() and cursor wrappers cost a small batch about 200 us on SQLite
    (nearly half of storing one event); what they would add here is DEBUG's query log and
    ``connection.execute_wrapper`` instrumentation, which the writer's statements bypass.
    Errors are Django's (``wrap_database_errors``), as through its cursor.
    """
    if connection.in_atomic_block:
        return record(results)
    # What Django's cursor() does first: with CONN_HEALTH_CHECKS, a connection that died since
    # the last batch (a database restart) is replaced instead of failing this one.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = connection.connection.cursor()
        try:
            cursor.execute(_begin_sql())
            try:
                stored = _number_and_insert(cursor, results, _driver_placeholder())
                cursor.execute("COMMIT")
            except BaseException:
                _roll_back(cursor)
                raise
        finally:
            # As Django's cursor wrapper does: a connection the rollback closed must not hide
            # the error that failed the batch behind its own (the outcome is settled by now).
            with contextlib.suppress(Exception):
                cursor.close()
    return stored


def _roll_back(cursor: Any) -> None:
    try:
        cursor.execute("ROLLBACK")
    except Exception:
        # Its state unknown (a broken connection), the next batch starts on a new one.
        connection.close()


def _begin_sql() -> str:
    # The writer always writes: on SQLite it takes the write lock up front, waiting for it
    # within the busy timeout, instead of failing midway when another connection holds it.
    return "BEGIN IMMEDIATE" if connection.vendor == "sqlite" else "BEGIN"


_DJANGO_PLACEHOLDER = "%s"


def _driver_placeholder() -> str:
    # sqlite3 takes qmark parameters; psycopg, like Django's cursors, takes %s.
    return "?" if connection.vendor == "sqlite" else _DJANGO_PLACEHOLDER


def _number_and_insert(
    cursor: Any, results: Sequence[Publishable], placeholder: str
) -> list[StoredEvent]:
    stored: dict[int, StoredEvent] = {}
    created_at = connection.ops.adapt_datetimefield_value(timezone.now())
    for graph_id, positions in _positions_by_graph(results):
        first = _reserve(cursor, graph_id, len(positions), placeholder)
        rows = []
        for offset, index in enumerate(positions):
            entry = _entry(results[index])
            seq = first + offset
            stored[index] = StoredEvent(
                graph_id, seq, entry.frame, entry.kind, entry.graph_exec_id, entry.user_id
            )
            rows.append(
                (
                    graph_id,
                    seq,
                    entry.graph_exec_id,
                    entry.node_id,
                    entry.status,
                    entry.kind,
                    entry.user_id,
                    entry.frame,
                    created_at,
                )
            )
        _insert_events(cursor, rows, placeholder)
    return [stored[index] for index in range(len(results))]


# From this many rows a PostgreSQL insert streams them with COPY: no statement formatted and
# parsed per row (a third of the insert's client time in batched ingest). Fewer go through
# executemany, which SQLite needs anyway.
COPY_FROM_ROWS = 8


def _insert_events(cursor: Any, rows: list[tuple[Any, ...]], placeholder: str) -> None:
    if len(rows) >= COPY_FROM_ROWS and _copies_rows():
        # Errors as Django's, as execute's are (a no-op inside record_alone's own wrapping).
        with connection.wrap_database_errors, cursor.copy(_copy_events_sql()) as copy:
            for row in rows:
                copy.write_row(row)
    else:
        cursor.executemany(_insert_events_sql(placeholder), rows)


def _copies_rows() -> bool:
    """Whether the database takes COPY through its driver: PostgreSQL with psycopg 3."""
    if connection.vendor != "postgresql":
        return False
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return bool(is_psycopg3)


def _positions_by_graph(results: Sequence[Publishable]) -> list[tuple[str, list[int]]]:
    positions: dict[str, list[int]] = {}
    for index, result in enumerate(results):
        positions.setdefault(result.graph_id, []).append(index)
    # A fixed lock order: two publishers of the same graphs can never deadlock each other.
    return sorted(positions.items())


def _reserve(cursor: Any, graph_id: str, count: int, placeholder: str) -> int:
    """Reserve `count` consecutive sequence numbers of a graph; return the first.

    The upsert locks the graph's row until commit: other publishers of this graph wait here.
    """
    cursor.execute(_reserve_sql(placeholder), [graph_id, count])
    (head,) = cursor.fetchone()
    return int(head) - count + 1


@cache
def _reserve_sql(placeholder: str) -> str:
    # INSERT .. ON CONFLICT .. RETURNING: SQLite 3.35+ and PostgreSQL, the databases we support
    # (checks.py refuses others).
    table = _quoted_table(GraphStream)
    head = _quoted_column(GraphStream, "head")
    key = _quoted_column(GraphStream, "graph_id")
    return (
        f"INSERT INTO {table} ({key}, {head}) VALUES ({placeholder}, {placeholder}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {head} = {table}.{head} + excluded.{head} "
        f"RETURNING {head}"
    )


_EVENT_COLUMNS = (
    "graph_id",
    "seq",
    "graph_exec_id",
    "node_id",
    "status",
    "kind",
    "user_id",
    "frame",
    "created_at",
)


@cache
def _insert_events_sql(placeholder: str) -> str:
    columns = ", ".join(_quoted_column(ExecutionEvent, name) for name in _EVENT_COLUMNS)
    placeholders = ", ".join([placeholder] * len(_EVENT_COLUMNS))
    return f"INSERT INTO {_quoted_table(ExecutionEvent)} ({columns}) VALUES ({placeholders})"


@cache
def _copy_events_sql() -> str:
    columns = ", ".join(_quoted_column(ExecutionEvent, name) for name in _EVENT_COLUMNS)
    return f"COPY {_quoted_table(ExecutionEvent)} ({columns}) FROM STDIN"


def _quoted_table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _quoted_column(model: type[Model], field_name: str) -> str:
    field = model._meta.get_field(field_name)
    assert isinstance(field, Field)
    assert field.column is not None
    return connection.ops.quote_name(field.column)


def position(graph_id: str) -> StreamPosition:
    head = GraphStream.objects.filter(pk=graph_id).values_list("head", flat=True).first() or 0
    oldest = ExecutionEvent.objects.filter(graph_id=graph_id).aggregate(oldest=Min("seq"))
    return StreamPosition(head=head, oldest=oldest["oldest"] or head + 1)


def heads(graph_ids: list[str]) -> dict[str, int]:
    """The last number handed out for each of these graphs (0 for a graph never published)."""
    known = dict(GraphStream.objects.filter(pk__in=graph_ids).values_list("graph_id", "head"))
    return {graph_id: known.get(graph_id, 0) for graph_id in graph_ids}


def events_after(
    graph_id: str, since: int, limit: int, until: int | None = None
) -> list[StoredEvent]:
    """Retained events of a graph with since < seq (<= until), oldest first, at most `limit`."""
    events = ExecutionEvent.objects.filter(graph_id=graph_id, seq__gt=since)
    if until is not None:
        events = events.filter(seq__lte=until)
    rows = events.order_by("seq").values_list(*_STORED_COLUMNS)[:limit]
    return [StoredEvent(graph_id, *row) for row in rows]


def latest_state(graph_id: str, until: int, graph_exec_id: str | None = None) -> list[StoredEvent]:
    """The latest event of every node of one execution, in seq order: of `graph_exec_id`, or
    of the graph's most recent execution. The execution's own latest graph event counts as one
    more node (its node_id is empty).

    Only events numbered up to `until` count, so the state matches a known head.
    """
    if graph_exec_id is None:
        graph_exec_id = (
            ExecutionEvent.objects.filter(graph_id=graph_id, seq__lte=until)
            .order_by("-seq")
            .values_list("graph_exec_id", flat=True)
            .first()
        )
        if graph_exec_id is None:
            return []
    of_execution = ExecutionEvent.objects.filter(
        graph_id=graph_id, graph_exec_id=graph_exec_id, seq__lte=until
    )
    latest_per_node = of_execution.values("node_id").annotate(latest=Max("seq")).values("latest")
    rows = (
        of_execution.filter(seq__in=latest_per_node).order_by("seq").values_list(*_STORED_COLUMNS)
    )
    return [StoredEvent(graph_id, *row) for row in rows]


# Executions a graph-wide snapshot (subscribe_graph_executions) shows at most: the latest ones.
LATEST_RUNS_LIMIT = 100


def latest_runs(graph_id: str, until: int) -> list[StoredEvent]:
    """The latest graph event of each of the graph's most recent executions, in seq order."""
    runs = ExecutionEvent.objects.filter(graph_id=graph_id, kind=Kind.GRAPH, seq__lte=until)
    latest_per_run = runs.values("graph_exec_id").annotate(latest=Max("seq")).order_by("-latest")
    newest = sorted(row["latest"] for row in latest_per_run[:LATEST_RUNS_LIMIT])
    rows = runs.filter(seq__in=newest).order_by("seq").values_list(*_STORED_COLUMNS)
    return [StoredEvent(graph_id, *row) for row in rows]


def execution_graph(graph_exec_id: str) -> str | None:
    """The graph an execution belongs to: that of its first stored event; None if none is.

    An id that later turns up in another graph's events stays with the graph it started in
    (rows are numbered in insertion order across graphs, seq only within one).
    """
    return (
        ExecutionEvent.objects.filter(graph_exec_id=graph_exec_id)
        .order_by("pk")
        .values_list("graph_id", flat=True)
        .first()
    )


@dataclass(frozen=True)
class PruneReport:
    graphs: int
    deleted: int


def prune(max_events: int | None, max_age: timedelta | None, batch_size: int = 5000) -> PruneReport:
    """Delete what is beyond each graph's last `max_events` events or older than `max_age`.

    Only ever a graph's oldest events go, so what is retained stays one contiguous range. Deletes
    in small batches, each its own transaction, and never touches the GraphStream rows that
    publishers lock, so publishing goes on while it runs.
    """
    deleted = 0
    graphs = 0
    cutoff = timezone.now() - max_age if max_age is not None else None
    for graph_id, head in GraphStream.objects.values_list("graph_id", "head").iterator():
        graphs += 1
        keep_from = head - max_events + 1 if max_events is not None else 1
        if cutoff is not None:
            too_old = ExecutionEvent.objects.filter(graph_id=graph_id, created_at__lt=cutoff)
            newest_too_old = too_old.aggregate(newest=Max("seq"))["newest"]
            if newest_too_old is not None:
                keep_from = max(keep_from, newest_too_old + 1)
        deleted += _delete_before(graph_id, keep_from, batch_size)
    return PruneReport(graphs=graphs, deleted=deleted)


def _delete_before(graph_id: str, keep_from: int, batch_size: int) -> int:
    deleted = 0
    while True:
        expired = ExecutionEvent.objects.filter(graph_id=graph_id, seq__lt=keep_from)
        batch = list(expired.order_by("seq").values_list("pk", flat=True)[:batch_size])
        if not batch:
            return deleted
        with transaction.atomic():
            deleted += ExecutionEvent.objects.filter(pk__in=batch).delete()[0]
