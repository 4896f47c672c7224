"""Our app's ASGI entry with timing probes: when each published event reaches each stage.

bench/latency_breakdown.py serves ``probe_asgi:application`` instead of
``project.asgi:application``. Without EXECUTIONS_PROBE_OUT in the environment this module only
re-exports the application. With it, the functions an ingested event passes through are
replaced by wrappers that note ``time.perf_counter_ns()`` and call the original with the same
arguments, returning what it returns: the app's code is left as it is.

Stages of one event, in order (the first two and the last two only under daphne):

- ``bytes``: the request's bytes reach Twisted's HTTPChannel.dataReceived;
- ``process``: daphne's WebRequest.process(), which starts the application;
- ``app``: IngestEndpoint.__call__, for ``POST /api/executions``;
- ``writer_start`` / ``writer_end``: the writer thread's store (history.record_alone) called and
  returned;
- ``loop``: events.broadcast() entered, back on the event loop;
- ``first_send`` / ``last_send``: the first and last frame of the event handed to a socket;
- ``first_write`` / ``last_write``: the first and last socket write of its WebSocket frame.

Socket writes are caught at ``socket.socket.send``, under whichever path the frame takes to
the socket (Twisted's buffered write, which sends from writeSomeData on a later turn of the
loop, or a direct send from the app), and counted only for a whole text frame of an event.

Marks are kept per event, keyed by graph and sequence number rather than by position, so that
a missing or late mark cannot shift the others. The request's own marks come before the event
has a number: they travel with the request in a context variable (daphne creates the
application's task inside dataReceived, so the task inherits it) and join the event's marks in
broadcast(). A socket write is the event's that was last sent on that socket.

The runner stops servers with signals, and atexit does not run under uvicorn, which re-raises
SIGTERM once it has shut down. So a daemon thread appends to the file, every 0.1 s, the events
marked since its last look, as one JSON line mapping event keys to their marks so far (a later
line replaces an event's earlier ones); atexit adds what is left under daphne. The runner stops
a server at least 0.3 s after the last frame arrived, so the last events are written by then.
Each write serializes a few events (microseconds with the GIL held), so the measurement is
barely disturbed.
"""

import atexit
import contextvars
import json
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from project.asgi import application  # sets Django up

__all__ = ["application"]

OUT_ENV = "EXECUTIONS_PROBE_OUT"
FLUSH_SECONDS = 0.1
INGEST_REQUEST = b"POST /api/executions"
# FIN + text opcode, the first byte of a whole server text frame. The benchmark's event frames
# are ~650 bytes; acks, pings and HTTP replies are shorter.
TEXT_FRAME = 0x81
FRAME_BYTES = 300

Marks = dict[str, int]

now = time.perf_counter_ns

# The marks of the request being handled, taken before its events have numbers.
_request: contextvars.ContextVar[Marks | None] = contextvars.ContextVar(
    "probe_request", default=None
)
_events: dict[str, Marks] = {}  # event key -> stage -> perf_counter_ns (a run's worth: small)
_changed: set[str] = set()  # keys of the events marked since the last flush
_events_lock = threading.Lock()  # the writer thread, the loop and the flusher all touch them
_flush_lock = threading.Lock()  # one flush at a time: whole lines, in order
# A daphne connection's socket -> the key of the event last sent on it
_last_sent: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def event_key(graph_id: str, seq: int) -> str:
    return f"{graph_id} {seq}"


def _note(key: str, marks: Marks) -> None:
    """Add marks to an event that the writer has stored."""
    with _events_lock:
        held = _events.get(key)
        if held is not None:  # else not an ingested event (a replay from the history)
            held.update(marks)
            _changed.add(key)


def _note_each(key: str, kind: str, at: int) -> None:
    """One of an event's sends or writes: keep the first and the last, and count them."""
    with _events_lock:
        held = _events.get(key)
        if held is not None:
            held.setdefault(f"first_{kind}", at)
            held[f"last_{kind}"] = at
            held[f"{kind}s"] = held.get(f"{kind}s", 0) + 1
            _changed.add(key)


def _note_request(stage: str, at: int) -> None:
    marks = _request.get()
    if marks is None:
        marks = {}
        _request.set(marks)
    marks[stage] = at


def _wrap_app() -> None:
    import executions.events
    from executions.consumers import ExecutionStreamConsumer
    from executions.history import StoredEvent
    from executions.ingest import IngestEndpoint, is_ingest_path
    from executions.schemas import ExecutionResult
    from executions.servers.daphne import daphne_protocol

    under_daphne = "daphne.server" in sys.modules
    original_call = IngestEndpoint.__call__
    from executions.writers import writers

    original_record = writers._store  # the writer thread's store, bound when it was made
    original_broadcast = executions.events.broadcast
    original_write_directly = ExecutionStreamConsumer._write_directly

    async def call(self: IngestEndpoint, scope: dict[str, Any], receive: Any, send: Any) -> None:
        at = now()
        if scope["type"] == "http" and scope["method"] == "POST" and is_ingest_path(scope):
            _note_request("app", at)
        await original_call(self, scope, receive, send)

    def record(results: Sequence[ExecutionResult]) -> list[StoredEvent]:
        start = now()
        stored = original_record(results)
        end = now()
        with _events_lock:
            for event in stored:
                key = event_key(event.graph_id, event.seq)
                _events[key] = {"writer_start": start, "writer_end": end}
                _changed.add(key)
        return stored

    async def broadcast(events: Sequence[StoredEvent]) -> None:
        at = now()
        marks = {**(_request.get() or {}), "loop": at}
        for event in events:
            _note(event_key(event.graph_id, event.seq), marks)
        await original_broadcast(events)

    def write_directly(
        self: ExecutionStreamConsumer, subscription: Any, seq: int, event: Any
    ) -> int | None:
        # Every frame of an event passes here first: sent on the spot by the fan-out, or by the
        # connection's task (which falls back to the ASGI send when this returns False).
        at = now()
        key = event_key(subscription.graph_id, seq)
        _note_each(key, "send", at)
        if under_daphne:
            transport = getattr(daphne_protocol(self.base_send), "transport", None)
            connection = getattr(transport, "socket", None)
            if connection is not None:
                _last_sent[connection] = key
        return original_write_directly(self, subscription, seq, event)

    IngestEndpoint.__call__ = call
    writers._store = record
    executions.events.broadcast = broadcast
    ExecutionStreamConsumer._write_directly = write_directly


def _wrap_daphne() -> None:
    from daphne.http_protocol import WebRequest
    from twisted.web.http import HTTPChannel

    original_data_received = HTTPChannel.dataReceived
    original_process = WebRequest.process
    original_socket_send = socket.socket.send

    def data_received(self: HTTPChannel, data: bytes) -> None:
        if not data.startswith(INGEST_REQUEST):
            original_data_received(self, data)
            return
        # The request is processed, and its application task created, inside this call.
        token = _request.set({"bytes": now()})
        try:
            original_data_received(self, data)
        finally:
            _request.reset(token)

    def process(self: WebRequest) -> Any:
        marks = _request.get()
        if marks is not None:
            marks["process"] = now()
        return original_process(self)

    def socket_send(self: socket.socket, data: Any, *flags: int) -> int:
        if len(data) > FRAME_BYTES and data[0] == TEXT_FRAME:
            at = now()
            key = _last_sent.get(self)
            if key is not None:
                _note_each(key, "write", at)
        return original_socket_send(self, data, *flags)

    HTTPChannel.dataReceived = data_received
    WebRequest.process = process
    socket.socket.send = socket_send  # Python's socket class; the C type underneath is untouched


def _flush(path: Path) -> None:
    """Append the events marked since the last flush, with all their marks so far."""
    with _flush_lock:
        with _events_lock:
            batch = {key: dict(_events[key]) for key in _changed}
            _changed.clear()
        if batch:
            with path.open("a") as out:
                out.write(json.dumps(batch) + "\n")


def _flush_forever(path: Path) -> None:
    while True:
        time.sleep(FLUSH_SECONDS)
        _flush(path)


def install(path: Path) -> None:
    """Wrap the stages' functions and start writing their marks to `path`."""
    _wrap_app()
    if "daphne.server" in sys.modules:
        _wrap_daphne()
    threading.Thread(target=_flush_forever, args=(path,), name="probe-flush", daemon=True).start()
    atexit.register(_flush, path)


if os.environ.get(OUT_ENV):
    install(Path(os.environ[OUT_ENV]))
