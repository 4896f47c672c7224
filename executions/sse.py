"""Server-Sent Events: a graph's results over plain HTTP, for clients that cannot open WebSockets.

``GET <api>/graphs/<graph_id>/events`` answers ``text/event-stream``. Each result is one event::

    id: <the graph's seq>
    event: execution_event
    data: <the WebSocket frame the subscriber would get, without "seq">

``GET <api>/executions/<graph_exec_id>/events`` follows one execution as AutoGPT's
``subscribe_graph_execution`` does: ``event: node_execution_event`` or ``graph_execution_event``,
``data:`` that frame (channel ``{user_id}|graph_exec#{graph_exec_id}``), ``id:`` its graph's seq.

``Last-Event-ID`` (which browsers send when they reconnect) or ``?since=N`` resumes exactly after
N from the history, then follows live; without either the stream is live from now. Events removed
by retention are reported as ``event: gap`` with ``{"requested_since", "head", "oldest"}``, and
the stream goes on from the oldest retained one. A comment (``: heartbeat``) every
EXECUTIONS_SSE_HEARTBEAT_SECONDS keeps proxies from closing an idle stream. A reader too slow for
EXECUTIONS_MAX_BACKLOG_BYTES gets ``event: error`` and the stream ends: reconnect with
Last-Event-ID. A revoked or expired credential (a password change, a logout, the token's end)
ends the stream too, with ``event: error`` and the same reason a WebSocket gets.

A Django async view returning a StreamingHttpResponse over an async generator: under ASGI Django
sends each chunk as it comes and cancels the generator when the client disconnects, so the
generator's ``finally`` gives the fan-out membership back. The view is mounted beside the ninja
API (executions.urls.api) rather than in it: it needs no schema, and ninja would run the
authentication of an async operation in ways that differ between its versions.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from channels.layers import get_channel_layer
from django.contrib.auth import get_user
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.http import require_GET

from executions import catchup, conf, history, metrics, revocation
from executions.catchup import on_shared_thread
from executions.channels import GraphView, View
from executions.errors import BAD_CREDENTIALS
from executions.exceptions import ExecutionsError
from executions.fanout import local_fanout
from executions.following import execution_followed, may_follow_graph
from executions.limits import admit_connection, open_connections
from executions.outbox import Backlog
from executions.protocol import ErrorText
from executions.revocation import TOKEN_KEY
from executions.scope import bearer_token
from executions.tokens import verify_token

HEARTBEAT = b": heartbeat\n\n"
OPENING = b": connected\n\n"
SLOW_READER = (
    "The stream fell too far behind and was closed: reconnect with Last-Event-ID to resume."
)


def sse_event(data: str, event: str, event_id: int | None = None) -> bytes:
    """One SSE event; a data line per line of `data` (JSON frames hold none)."""
    lines = [] if event_id is None else [f"id: {event_id}"]
    lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


_METHOD_START = len('{"method":"')


def stream_event(frame: str, seq: int) -> bytes:
    """A frame as an event named by its method (every frame starts with it)."""
    return sse_event(frame, frame[_METHOD_START : frame.index('"', _METHOD_START)], seq)


def _shown(view: View, events: list[history.StoredEvent]) -> bytes:
    """The events of a page (of a replay, of a gap) that the view shows, as SSE events."""
    chunks = []
    for event in events:
        frame = view.render(event.message())
        if frame is not None:
            chunks.append(stream_event(frame, event.seq))
    return b"".join(chunks)


def _compact(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def gap_event(since: int, position: history.StreamPosition) -> bytes:
    data = {"requested_since": since, "head": position.head, "oldest": position.oldest}
    return sse_event(_compact(data), "gap")


def error_event(reason: str) -> bytes:
    return sse_event(_compact({"error": reason}), "error")


class StreamReceiver:
    """The fan-out's hand-off to one SSE response: a bounded backlog, never blocking; and the
    revocation of its credential (executions.revocation), which ends the stream."""

    def __init__(self) -> None:
        self.backlog = Backlog(conf.get("EXECUTIONS_MAX_BACKLOG_BYTES"))
        self.revoked: str | None = None

    def enqueue(self, event: dict[str, Any]) -> int:
        self.backlog.put(event)
        return 0

    async def open(self) -> bool:
        """Whether the replay may go on: not once the credential is revoked."""
        return self.revoked is None

    def revoke(self, reason: str) -> None:
        if self.revoked is None:
            self.revoked = reason
            self.backlog.wake()


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


async def _authenticated(request: HttpRequest) -> dict[str, Any] | None:
    """The session's user, else the bearer token's (as the history API decides), as the parts of
    a scope that executions.revocation reads; None: neither."""
    if hasattr(request, "session"):
        user = await on_shared_thread(get_user, request)
        if user.is_authenticated:
            return {"user": user, "session": request.session}
    token = bearer_token(request.headers.get("Authorization", ""))
    if token:
        try:
            verified = await on_shared_thread(verify_token, token)
        except ExecutionsError:
            return None
        return {"user": verified.user, TOKEN_KEY: verified}
    return None


def _since(request: HttpRequest) -> int | str | None:
    """The number to resume after (Last-Event-ID first, then ?since), None, or an error text."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.GET.get("since")
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit():
        return "Last-Event-ID and since must be a non-negative integer."
    return int(raw)


@require_GET
async def graph_events(request: HttpRequest, graph_id: str) -> HttpResponseBase:
    scope = await _authenticated(request)
    if scope is None:
        return _error(401, BAD_CREDENTIALS)
    if not await on_shared_thread(may_follow_graph, scope["user"], graph_id):
        return _error(403, "Not allowed to read this graph.")
    return _event_stream(request, graph_id, GraphView(), scope)


@require_GET
async def execution_events(request: HttpRequest, graph_exec_id: str) -> HttpResponseBase:
    """One execution's events, as AutoGPT's subscribe_graph_execution sends them."""
    scope = await _authenticated(request)
    if scope is None:
        return _error(401, BAD_CREDENTIALS)
    followed = await on_shared_thread(execution_followed, scope["user"], graph_exec_id)
    if followed is None:
        return _error(404, ErrorText.NO_SUCH_EXECUTION)
    graph_id, view = followed
    return _event_stream(request, graph_id, view, scope)


class _Slot:
    """The connection slot a stream holds (limits.open_connections, which WebSockets count in
    too), given back once: by the stream when it ends, or by Django closing the response, which
    it does in a thread, also for a stream that never started."""

    def __init__(self, user_key: object) -> None:
        self.user_key = user_key
        self._loop = asyncio.get_running_loop()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            open_connections.release(self.user_key)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self.release)


class _CountedStream:
    """A stream's events, for StreamingHttpResponse, which calls close() when it is done."""

    def __init__(self, events: AsyncIterator[bytes], slot: _Slot) -> None:
        self._events = events
        self.close = slot.close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events


def _event_stream(
    request: HttpRequest, graph_id: str, view: View, scope: dict[str, Any]
) -> HttpResponseBase:
    since = _since(request)
    if isinstance(since, str):
        return _error(400, since)
    user_key = scope["user"].pk
    refused = admit_connection(user_key)
    if refused is not None:
        return _error(503 if refused.limit == "process" else 429, refused.reason)
    slot = _Slot(user_key)
    response = StreamingHttpResponse(
        _CountedStream(_stream(graph_id, view, since, scope, slot), slot),
        content_type="text/event-stream; charset=utf-8",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


async def _stream(
    graph_id: str, view: View, since: int | None, scope: dict[str, Any], slot: _Slot
) -> AsyncIterator[bytes]:
    fanout = local_fanout(get_channel_layer())
    receiver = StreamReceiver()
    backlog = receiver.backlog
    credential = await on_shared_thread(revocation.credential_of, scope)
    expiry = revocation.ExpiryWatch(scope, receiver.revoke, on_shared_thread)
    expiry.arm(credential)
    metrics.SUBSCRIPTIONS.inc()
    try:
        # Given back in `finally` whatever happens, even if the stream never gets further.
        await fanout.track(receiver, credential)
        await fanout.add(graph_id, receiver)
        # A revocation sent before the stream was tracked reached nobody: look once more.
        refusal = await on_shared_thread(revocation.refusal_now, scope)
        if refusal is not None:
            receiver.revoke(refusal)
        # Read after joining: whatever is published from here on also arrives live. And read
        # before the opening comment: a client that has seen it gets whatever follows.
        position = await on_shared_thread(history.position, graph_id)
        yield OPENING
        delivered = position.head
        if since is not None:
            if position.is_truncated_after(since):
                yield gap_event(since, position)
            start = position.replay_start(since)
            async for page in catchup.replay_pages(graph_id, start, position.head, receiver.open):
                yield _shown(view, page)
        heartbeat = float(conf.get("EXECUTIONS_SSE_HEARTBEAT_SECONDS"))
        while True:
            if receiver.revoked is not None:
                metrics.CONNECTIONS_REVOKED.labels(receiver.revoked).inc()
                yield error_event(receiver.revoked)
                return
            if backlog.overflowed:
                metrics.SLOW_CONSUMER_DISCONNECTS.inc()
                yield error_event(SLOW_READER)
                return
            if not backlog:
                try:
                    await asyncio.wait_for(backlog.wait(), heartbeat)
                except TimeoutError:
                    yield HEARTBEAT
                continue
            live = backlog.pop()
            seq: int = live["seq"]
            if seq <= delivered:
                continue
            missing = await catchup.missing_before(graph_id, delivered, seq)
            frame = view.render(live)
            chunk = _shown(view, missing)
            if frame is not None:
                chunk += stream_event(frame, seq)
            if chunk:
                yield chunk
            delivered = seq
    finally:
        slot.release()
        expiry.cancel()
        metrics.SUBSCRIPTIONS.dec()
        await fanout.discard(graph_id, receiver)
        await fanout.untrack(receiver, credential)
