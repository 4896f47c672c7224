"""A Python client of the execution stream, for services and scripts (on ``websockets``).

::

    from executions.client import connect

    async with connect("ws://127.0.0.1:8000/ws", token=token) as stream:
        async for result in stream.subscribe("G", since=41):
            handle(result)                           # a validated ExecutionResult
            checkpoint = stream.position("G")        # its seq: pass it as since next time

The token travels in the handshake's ``Authorization: Bearer`` header, never in the URL.

One run of a graph, as AutoGPT's current protocol sends it (``subscribe_graph_execution``)::

        async for event in stream.follow_execution(graph_exec_id, since=0):
            ...  # a NodeExecutionEvent (each node's progress) or a GraphExecutionEvent (the run's)

Where a subscription starts (``stream.subscribe(graph_id, since=None, snapshot=False)``):

- ``since=N``: every event numbered after N, from the server's history, then the live stream;
  ``since=0`` replays all the retained history first.
- ``snapshot=True``: the latest result of every node of the graph's most recent execution, then
  the live stream (``since`` wins when both are given, as on the server).
- neither: the live stream only, from now on.

Whatever the start, the client always subscribes in the numbered mode of the protocol, so each
event has a sequence number ``seq``. ``subscription.position`` (also
``stream.position(graph_id)``) is the ``seq`` of the last result the iterator returned: resuming
with ``since=position``, in this process or a later one, continues exactly after it. It is known
before the first result too (the ``since`` given, or the head the server reported), and is
``None`` only until then.

Reconnecting: when the connection drops (network failure, server restart with 1012, a slow
consumer closed with 4008, a missed heartbeat...) the client reconnects with exponential backoff
and jitter, bounded by ``Reconnect(max_attempts=..., max_elapsed=...)``, and resubscribes every
graph with ``since`` = the last ``seq`` it received, so no event is missed and none is returned
twice (a number already received is dropped). While the connection is down, results already
received keep coming out of the iterators. When the server reports that retention removed
events after that number, the subscription records a ``Gap`` in ``subscription.gaps`` and logs
a warning: a gap is never silent.

Heartbeats: every ``heartbeat_interval`` seconds (20 by default, 0.1 to 300) the client sends
the protocol's heartbeat; a connection from which nothing at all arrives during the next
interval is considered dead, dropped and reconnected. (``websockets`` also answers and sends
protocol-level pings.)

Errors, all subclasses of ``ClientError``:

- ``AuthenticationFailed``: the server closed with 4001; ``reason`` is the server's own
  (``Missing authentication token``, ``Invalid token``, ``Token expired``, or why access was
  revoked while connected). Not retried, except one case: with ``token`` a callable (sync or
  async), which mints a fresh token for each connection attempt, a connection closed because
  its token expired reconnects with a new one and resumes every subscription with ``since``.
- ``SubscriptionRefused``: the user may not see the graph; raised by that subscription's
  iterator, the connection and the other subscriptions go on.
- ``ProtocolError``: the server answered one of our requests with an error frame (raised by that
  subscription), sent a result that does not validate, refused the handshake with an HTTP 4xx,
  or closed the connection over something the client sent (1008, 1009, 4009, 4029...).
- ``ConnectionLost``: the server stayed unreachable for the whole reconnect budget.

A stream-wide failure ends every subscription of the stream with that exception, once the
results received before it have been returned.

The iterators hold at most ``max_buffered`` received results each; when one is full the client
stops reading the connection until its consumer catches up (the server then sees a slow
consumer and, past its limit, closes with 4008: the client reconnects and resumes).
"""

import asyncio
import contextlib
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import ValidationError

from executions.extras import MissingExtra

try:
    from websockets.asyncio.client import ClientConnection
    from websockets.asyncio.client import connect as websocket_connect
    from websockets.datastructures import Headers, HeadersLike
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
except ImportError as missing:
    raise MissingExtra("client", "The Python client (executions.client)") from missing

from executions.channels import execution_channel
from executions.protocol import CloseCode, ErrorText
from executions.schemas import (
    ExecutionResult,
    ExecutionSubscriptionRequest,
    GraphExecutionEvent,
    NodeExecutionEvent,
    SubscriptionRequest,
)

__all__ = [
    "AuthenticationFailed",
    "ClientError",
    "ConnectionLost",
    "ConnectionState",
    "ExecutionStream",
    "ExecutionSubscription",
    "Gap",
    "ProtocolError",
    "Reconnect",
    "Subscription",
    "SubscriptionRefused",
    "connect",
]

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL: Final = 20.0
MIN_HEARTBEAT_INTERVAL: Final = 0.1
MAX_HEARTBEAT_INTERVAL: Final = 300.0
DEFAULT_MAX_BUFFERED: Final = 1000
# Results can be large (the ingest endpoint takes bodies of megabytes): websockets' 1 MiB
# default would close the connection over a legitimate frame.
DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
# Requests sent per second after a burst; half the server's defaults (20 a second, 40 burst),
# so resubscribing many graphs after a reconnect is never refused as a flood.
REQUEST_RATE: Final = 10.0
REQUEST_BURST: Final = 20
# After the server ignored a request over its rate limit, unanswered subscribes go again.
RATE_LIMITED_RETRY_SECONDS: Final = 1.0

_HEARTBEAT = json.dumps({"method": "heartbeat", "data": "ping"})
_NO_CLOSE_FRAME = 1006

# Closes caused by what this client sent: reconnecting would only repeat them.
_FATAL_CLOSE_CODES: Final = frozenset(
    {
        1002,  # protocol error
        1003,  # unsupported data
        1007,  # invalid payload
        1008,  # policy violation
        1009,  # message too big (daphne's refusal)
        1010,  # mandatory extension
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.RATE_LIMITED,
    }
)


# --- errors -------------------------------------------------------------------------------


class ClientError(Exception):
    """Base class of the client's errors."""


class AuthenticationFailed(ClientError):
    """The server refused the token (close 4001); ``reason`` says why, in the server's words."""

    def __init__(self, reason: str, code: int = CloseCode.UNAUTHENTICATED) -> None:
        self.reason = reason
        self.code = code
        super().__init__(f"Authentication failed: {reason}")


class ProtocolError(ClientError):
    """An error frame answering one of our requests, or a close over what the client sent.

    ``error`` is the server's sentence, ``channel`` the graph it named (if any) and ``code`` the
    close code when the server closed the connection.
    """

    def __init__(self, error: str, channel: str | None = None, code: int | None = None) -> None:
        self.error = error
        self.channel = channel
        self.code = code
        where = f" (graph {channel!r})" if channel is not None else ""
        closed = f" (closed with {code})" if code is not None else ""
        super().__init__(f"{error}{where}{closed}")


class SubscriptionRefused(ClientError):
    """The server does not let this user follow the graph or execution (whether or not it
    exists); ``graph_id`` is what was asked for: the graph id, or the execution id."""

    def __init__(
        self, graph_id: str, reason: str = ErrorText.NOT_ALLOWED, what: str = "graph"
    ) -> None:
        self.graph_id = graph_id
        self.reason = reason
        super().__init__(f"Subscription to {what} {graph_id!r} refused: {reason}")


class ConnectionLost(ClientError):
    """The connection dropped and could not be opened again within the reconnect budget."""

    def __init__(self, attempts: int, elapsed: float, cause: str) -> None:
        self.attempts = attempts
        self.elapsed = elapsed
        self.cause = cause
        super().__init__(
            f"Connection lost: gave up after {attempts} reconnect attempt(s) over "
            f"{elapsed:.1f} s; last failure: {cause}"
        )


class _Retryable(Exception):
    """A connection attempt failed in a way another attempt may not."""


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How to reconnect: exponential backoff with jitter, within a budget.

    Attempt n waits ``min(max_delay, initial_delay * multiplier ** (n - 1))``, minus a random
    share of up to ``jitter`` of it (so many clients dropped together do not come back in
    step). The client gives up (``ConnectionLost``) after ``max_attempts`` failed attempts in a
    row or once ``max_elapsed`` seconds have passed since the connection was lost; ``None``
    lifts either bound. ``Reconnect(max_attempts=0)`` never reconnects.
    """

    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = 10
    max_elapsed: float | None = 300.0

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError("Reconnect delays must satisfy 0 <= initial_delay <= max_delay.")
        if self.multiplier < 1:
            raise ValueError("Reconnect.multiplier must be 1 or more.")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Reconnect.jitter must be between 0 and 1.")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("Reconnect.max_attempts must be zero or more (or None).")
        if self.max_elapsed is not None and self.max_elapsed < 0:
            raise ValueError("Reconnect.max_elapsed must be zero or more (or None).")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before reconnect attempt number `attempt` (1 for the first)."""
        exponent = min(max(attempt - 1, 0), 64)
        base = min(self.max_delay, self.initial_delay * self.multiplier**exponent)
        return base * (1 - self.jitter * (rng or random).random())


class ConnectionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"
    FAILED = "failed"


StateCallback = Callable[[ConnectionState, str], None]
TokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Gap:
    """Events the server could no longer replay when a subscription (re)started.

    ``since`` is the number the client asked to resume after; ``oldest`` the first event the
    server still retains and ``head`` its last. When ``since`` is beyond ``head`` the server's
    history is not the one the number came from (a reset database): the replay starts over
    from ``oldest``.
    """

    graph_id: str
    since: int
    oldest: int
    head: int

    @property
    def reset(self) -> bool:
        return self.since > self.head

    @property
    def missed(self) -> range:
        """The sequence numbers lost for good (empty for a reset history)."""
        return range(0) if self.reset else range(self.since + 1, self.oldest)


# --- subscriptions ------------------------------------------------------------------------


class _Ended(Exception):
    """Marks a subscription that ended normally (closed by its owner or with its stream)."""


_WAKE: Final = None  # put in a queue to wake a consumer waiting on it


class Subscription:
    """One graph's results, as an async iterator of ``ExecutionResult``.

    ``position`` is the seq of the last result returned (see the module docstring), ``head``
    the server's head at the latest (re)subscribe, ``gaps`` the events retention removed before
    they could be replayed. Use it as an async context manager, or call ``aclose()``, to
    unsubscribe before the stream closes.
    """

    # The request that starts it, and the event frames it takes.
    _method: str = "subscribe"
    _kind: str = "graph"

    def __init__(
        self,
        stream: "ExecutionStream",
        request: SubscriptionRequest | ExecutionSubscriptionRequest,
        max_buffered: int,
    ) -> None:
        self.graph_id: str = getattr(request, "graph_id", "")
        self.position: int | None = request.since
        self.head: int | None = None
        self.gaps: list[Gap] = []
        self._stream = stream
        self._live_only = request.since is None and not request.snapshot
        self._queue: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue(max_buffered)
        self._ending: BaseException | None = None
        # The last seq received from the server: where a reconnect resumes (None: not yet known).
        self._received: int | None = request.since
        self._awaiting_ack = False
        self._requested_since: int | None = None
        self._acked_once = False

    def __repr__(self) -> str:
        return f"<Subscription {self.graph_id!r} position={self.position}>"

    @property
    def key(self) -> tuple[str, str]:
        """What the stream knows it by: the kind of subscription and the id it follows."""
        return (self._kind, self._target_id)

    @property
    def _target_id(self) -> str:
        return self.graph_id

    def _target(self) -> dict[str, Any]:
        """The request data that names what is followed (also that of the unsubscribe)."""
        return {"graph_id": self.graph_id}

    def _item(self, method: str, data: Any) -> Any:
        """The validated item an event frame carries (raises ValidationError)."""
        return ExecutionResult.model_validate(data)

    def _refusal(self, error: str) -> ClientError:
        if error == ErrorText.NOT_ALLOWED:
            return SubscriptionRefused(self._target_id, error)
        return ProtocolError(error, self._target_id)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._ending is not None and self._queue.empty():
                if isinstance(self._ending, _Ended):
                    raise StopAsyncIteration
                raise self._ending
            item = await self._queue.get()
            if item is _WAKE:
                continue
            seq, result = item
            self.position = seq
            return result

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe; the iterator then ends after the results it already holds."""
        await self._stream._unsubscribe(self)

    @property
    def active(self) -> bool:
        return self._ending is None

    def _end(self, reason: BaseException) -> None:
        if self._ending is None:
            self._ending = reason
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_WAKE)

    def _subscribe_data(self) -> dict[str, Any]:
        """What to ask for on this connection: a snapshot to learn the head, or a resume.

        A snapshot cut short resumes after its last frame received: its frames are in seq
        order, so the replay holds the rest of them and every event since, whatever a view
        filters out (a snapshot need not end with the head it was acknowledged with).
        """
        if self._received is None:
            self._requested_since = None
            return {**self._target(), "snapshot": True}
        self._requested_since = self._received
        return {**self._target(), "since": self._received}

    def _on_ack(self, head: int, oldest: int, truncated: bool) -> None:
        self.head = head
        since = self._requested_since
        if since is not None:
            if truncated:
                gap = Gap(self._target_id, since, oldest, head)
                self.gaps.append(gap)
                if gap.reset:
                    logger.warning(
                        "Graph %r: resuming after #%d, but the server's history ends at #%d: "
                        "it was reset; replaying what it retains from #%d.",
                        self._target_id,
                        since,
                        head,
                        oldest,
                    )
                    self._received = oldest - 1
                else:
                    logger.warning(
                        "Graph %r: events #%d to #%d are no longer retained by the server and "
                        "were missed.",
                        self._target_id,
                        since + 1,
                        oldest - 1,
                    )
        elif self._live_only and not self._acked_once:
            # Live only: the snapshot frames that follow (all numbered up to the head) are
            # dropped as already seen.
            self._received = head
            self.position = head
        elif head == 0:
            self._received = self.position = 0
        self._acked_once = True

    def _accept(self, seq: int) -> bool:
        """Whether an event numbered `seq` is new; it then becomes the resume point."""
        if self._received is not None and seq <= self._received:
            return False
        self._received = seq
        return True


class ExecutionSubscription(Subscription):
    """One execution's events, as AutoGPT's protocol sends them: an async iterator of
    ``NodeExecutionEvent`` (node results, whichever way they were published) and
    ``GraphExecutionEvent`` (the run's own status, inputs and outputs).

    Numbered with the sequence numbers of the execution's graph: ``position`` and resuming work
    as for a graph's Subscription. ``graph_id`` is known once an event has arrived.
    """

    _method = "subscribe_graph_execution"
    _kind = "execution"

    def __init__(
        self, stream: "ExecutionStream", request: ExecutionSubscriptionRequest, max_buffered: int
    ) -> None:
        super().__init__(stream, request, max_buffered)
        self.graph_exec_id: str = request.graph_exec_id

    def __repr__(self) -> str:
        return f"<ExecutionSubscription {self.graph_exec_id!r} position={self.position}>"

    @property
    def _target_id(self) -> str:
        return self.graph_exec_id

    def _target(self) -> dict[str, Any]:
        return {"graph_exec_id": self.graph_exec_id}

    def _item(self, method: str, data: Any) -> Any:
        model = GraphExecutionEvent if method == "graph_execution_event" else NodeExecutionEvent
        item = model.model_validate(data)
        self.graph_id = item.graph_id
        return item

    def _refusal(self, error: str) -> ClientError:
        if error == ErrorText.NO_SUCH_EXECUTION:
            return SubscriptionRefused(self.graph_exec_id, error, what="execution")
        return ProtocolError(error, self.graph_exec_id)


# Event frames, by method: the kind of subscription they are for.
_EVENT_KINDS: Final = {
    "execution_event": "graph",
    "node_execution_event": "execution",
    "graph_execution_event": "execution",
}
# Acknowledgements, by method: the kind of subscription they answer.
_ACK_KINDS: Final = {"subscribe": "graph", "subscribe_graph_execution": "execution"}
_EXECUTION_CHANNEL_MARK: Final = execution_channel("", "")


def _key_of(kind: str, channel: str) -> tuple[str, str]:
    """The subscription a frame's channel names: a graph id, or ``{user}|graph_exec#{id}``."""
    if kind == "execution":
        # A user id never holds the mark, so the first one ends it.
        return (kind, channel.partition(_EXECUTION_CHANNEL_MARK)[2])
    return (kind, channel)


# --- the stream ---------------------------------------------------------------------------


class _Pacer:
    """A token bucket for outgoing requests: waits rather than exceed the rate."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


_Outgoing = tuple[str, Subscription]
_Key = tuple[str, str]


class ExecutionStream:
    """One WebSocket connection (re-opened as needed) carrying any number of subscriptions.

    Use through ``connect(...)`` as an async context manager.
    """

    def __init__(
        self,
        url: str,
        token: TokenSource | None = None,
        *,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        reconnect: Reconnect | None = None,
        open_timeout: float = 10.0,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        on_state: StateCallback | None = None,
        seed: int | None = None,
        **websocket_options: Any,
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("ws", "wss"):
            raise ValueError(f"A stream URL starts with ws:// or wss://, not {url!r}.")
        if not MIN_HEARTBEAT_INTERVAL <= heartbeat_interval <= MAX_HEARTBEAT_INTERVAL:
            raise ValueError(
                f"heartbeat_interval must be between {MIN_HEARTBEAT_INTERVAL} and "
                f"{MAX_HEARTBEAT_INTERVAL} seconds."
            )
        if open_timeout <= 0:
            raise ValueError("open_timeout must be a positive number of seconds.")
        if max_buffered < 1:
            raise ValueError("max_buffered must be 1 or more.")
        self.url = url
        self._token = token
        self.heartbeat_interval = heartbeat_interval
        self.reconnect = reconnect or Reconnect()
        self.open_timeout = open_timeout
        self.max_buffered = max_buffered
        self._on_state = on_state
        self._rng = random.Random(seed)
        self._websocket_options: dict[str, Any] = {
            "max_size": DEFAULT_MAX_FRAME_BYTES,
            "close_timeout": 2.0,
            **websocket_options,
        }
        self._state = ConnectionState.CLOSED
        self._ws: ClientConnection | None = None
        self._outbox: asyncio.Queue[_Outgoing] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._subscriptions: dict[_Key, Subscription] = {}
        self._known: dict[_Key, Subscription] = {}
        self._failure: ClientError | None = None
        self._closing = False
        self._close_hint: str | None = None
        self._last_frame_at = time.monotonic()
        self._delivering = False
        self._pacer = _Pacer(REQUEST_RATE, REQUEST_BURST)
        self.reconnects = 0  # connections re-opened after a drop, for the curious and the tests

    # --- public API -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def failure(self) -> ClientError | None:
        """The error that ended the stream, if one did."""
        return self._failure

    def subscribe(
        self, graph_id: str, *, since: int | None = None, snapshot: bool = False
    ) -> Subscription:
        """Follow a graph; iterate the returned Subscription for its results.

        Raises ValueError for an invalid graph id or since, or a graph this stream already
        follows. The subscribe request goes out at once (or on the next connection).
        """
        request = SubscriptionRequest(graph_id=graph_id, since=since, snapshot=snapshot)
        return self._start(Subscription(self, request, self.max_buffered))

    def follow_execution(
        self, graph_exec_id: str, *, since: int | None = None, snapshot: bool = False
    ) -> ExecutionSubscription:
        """Follow one execution (AutoGPT's subscribe_graph_execution); iterate the returned
        ExecutionSubscription for its NodeExecutionEvent and GraphExecutionEvent items.

        ``since`` is a sequence number of the execution's graph (an ExecutionSubscription's
        ``position``); ``snapshot`` starts with the latest event of each of its nodes and of the
        run. Raises ValueError for an invalid id or since, or an execution already followed.
        """
        request = ExecutionSubscriptionRequest(
            graph_exec_id=graph_exec_id, since=since, snapshot=snapshot
        )
        return self._start(ExecutionSubscription(self, request, self.max_buffered))

    def _start[S: Subscription](self, subscription: S) -> S:
        if subscription.key in self._subscriptions:
            kind, target = subscription.key
            raise ValueError(f"This stream already follows {kind} {target!r}.")
        self._known[subscription.key] = subscription
        if self._failure is not None:
            subscription._end(self._failure)
        elif self._closing or self._runner is None:
            subscription._end(
                ClientError("The stream is not open: use it inside `async with connect(...)`.")
            )
        else:
            self._subscriptions[subscription.key] = subscription
            if self._outbox is not None:
                self._outbox.put_nowait(("subscribe", subscription))
        return subscription

    def position(self, graph_id: str) -> int | None:
        """The seq of the last result returned for the graph (None until known)."""
        subscription = self._known.get(("graph", graph_id))
        return subscription.position if subscription is not None else None

    async def open(self) -> None:
        """Connect (retrying within the reconnect budget); raise AuthenticationFailed etc."""
        if self._runner is not None:
            raise RuntimeError("This stream is already open.")
        self._set_state(ConnectionState.CONNECTING, self.url)
        try:
            try:
                ws = await self._open_connection()
            except _Retryable as exc:
                ws = await self._reconnect(str(exc), initial=True)
        except ClientError as exc:
            self._failure = exc
            self._set_state(ConnectionState.FAILED, str(exc))
            raise
        self._ws = ws
        self._set_state(ConnectionState.CONNECTED, self.url)
        self._runner = asyncio.create_task(self._run(ws), name=f"executions-stream {self.url}")

    async def close(self) -> None:
        """Close the connection; every subscription ends after the results it holds."""
        if self._closing:
            return
        self._closing = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        for subscription in list(self._subscriptions.values()):
            subscription._end(_Ended())
        self._subscriptions.clear()
        if self._failure is None:
            self._set_state(ConnectionState.CLOSED, "closed by the client")

    # --- connections --------------------------------------------------------------------------

    async def _current_token(self) -> str | None:
        if self._token is None or isinstance(self._token, str):
            return self._token
        token = self._token()
        if inspect.isawaitable(token):
            token = await token
        return str(token)

    async def _open_connection(self) -> ClientConnection:
        """Open a connection and prove it with a heartbeat round trip (the token is checked)."""
        token = await self._current_token()
        url, options = self.url, self._websocket_options
        if token:
            # In a header, never in the URL, which servers and proxies write to their logs.
            url = _without_token(url)
            headers = _with_authorization(options.get("additional_headers"), token)
            options = {**options, "additional_headers": headers}
        try:
            ws = await websocket_connect(url, open_timeout=self.open_timeout, **options)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if 400 <= status < 500:
                raise ProtocolError(
                    f"The server refused the WebSocket handshake with HTTP {status}."
                ) from exc
            raise _Retryable(f"handshake answered HTTP {status}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _Retryable(_describe(exc)) from exc
        hint: str | None = None
        try:
            async with asyncio.timeout(self.open_timeout):
                with contextlib.suppress(ConnectionClosed):
                    # Closed already (a refused token): the reason is in the frames received.
                    await ws.send(_HEARTBEAT)
                while True:
                    frame = _parse(await ws.recv())
                    if frame is None:
                        continue
                    if frame.get("method") == "heartbeat":
                        break
                    if frame.get("method") == "error":
                        hint = str(frame.get("error") or "")
        except ConnectionClosed as closed:
            raise self._close_error(closed, hint) or _Retryable(_describe_close(closed)) from None
        except TimeoutError:
            ws.transport.abort()
            raise _Retryable("no answer to a heartbeat after connecting") from None
        return ws

    async def _reconnect(self, cause: str, *, initial: bool = False) -> ClientConnection:
        policy = self.reconnect
        started = time.monotonic()
        attempts = 0
        while True:
            elapsed = time.monotonic() - started
            if policy.max_attempts is not None and attempts >= policy.max_attempts:
                raise ConnectionLost(attempts, elapsed, cause)
            delay = policy.delay(attempts + 1, self._rng)
            if policy.max_elapsed is not None and elapsed + delay > policy.max_elapsed:
                raise ConnectionLost(attempts, elapsed, cause)
            attempts += 1
            self._set_state(
                ConnectionState.CONNECTING if initial else ConnectionState.RECONNECTING,
                f"{cause}; attempt {attempts} in {delay:.1f} s",
            )
            await asyncio.sleep(delay)
            try:
                ws = await self._open_connection()
            except _Retryable as exc:
                cause = str(exc)
                continue
            if not initial:
                self.reconnects += 1
            return ws

    def _close_error(self, closed: ConnectionClosed, hint: str | None) -> ClientError | None:
        """The error a close means, or None when reconnecting may help."""
        code = _close_code(closed)
        reason = (closed.rcvd.reason if closed.rcvd is not None else "") or hint or ""
        if code == CloseCode.UNAUTHENTICATED:
            if reason == ErrorText.TOKEN_EXPIRED and callable(self._token):
                # The token source mints a fresh one for the next attempt, which resumes.
                return None
            return AuthenticationFailed(reason or "refused by the server", code)
        if code in _FATAL_CLOSE_CODES:
            return ProtocolError(reason or "connection closed by the server", code=code)
        return None

    def _set_state(self, state: ConnectionState, detail: str = "") -> None:
        self._state = state
        logger.debug("execution stream %s: %s", state.value, detail)
        if self._on_state is not None:
            try:
                self._on_state(state, detail)
            except Exception:
                logger.exception("The on_state callback failed")

    # --- the running connection ----------------------------------------------------------------

    async def _run(self, ws: ClientConnection) -> None:
        try:
            while True:
                self._ws = ws
                self._close_hint = None
                if self._state != ConnectionState.CONNECTED:
                    self._set_state(ConnectionState.CONNECTED, self.url)
                closed = await self._serve(ws)
                self._ws = None
                error = self._close_error(closed, self._close_hint)
                if error is not None:
                    raise error
                ws = await self._reconnect(_describe_close(closed, self._close_hint))
        except ClientError as exc:
            self._fail(exc)
        except Exception as exc:
            logger.exception("The execution stream failed")
            self._fail(ClientError(f"The execution stream failed: {exc!r}"))

    def _fail(self, error: ClientError) -> None:
        self._failure = error
        self._set_state(ConnectionState.FAILED, str(error))
        for subscription in list(self._subscriptions.values()):
            subscription._end(error)
        self._subscriptions.clear()

    async def _serve(self, ws: ClientConnection) -> ConnectionClosed:
        """Read the connection until it closes; a writer task sends requests and heartbeats."""
        outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        for subscription in self._subscriptions.values():
            outbox.put_nowait(("subscribe", subscription))
        self._outbox = outbox
        self._last_frame_at = time.monotonic()
        writer = asyncio.create_task(self._write(ws, outbox))
        try:
            while True:
                await self._handle(await ws.recv())
        except ConnectionClosed as closed:
            return closed
        finally:
            self._outbox = None
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write(self, ws: ClientConnection, outbox: asyncio.Queue[_Outgoing]) -> None:
        interval = self.heartbeat_interval
        heartbeat_sent_at: float | None = None
        next_heartbeat = time.monotonic() + interval
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.0, next_heartbeat - time.monotonic())):
                        kind, subscription = await outbox.get()
                except TimeoutError:
                    silent = heartbeat_sent_at is not None and (
                        self._last_frame_at < heartbeat_sent_at
                    )
                    if silent and not self._delivering:
                        logger.warning(
                            "No answer to a heartbeat within %.1f s: reconnecting.", interval
                        )
                        ws.transport.abort()
                        return
                    await self._pacer.take()
                    heartbeat_sent_at = time.monotonic()
                    next_heartbeat = heartbeat_sent_at + interval
                    await ws.send(_HEARTBEAT)
                    continue
                current = self._subscriptions.get(subscription.key)
                if kind == "subscribe":
                    if current is not subscription:
                        continue  # ended or replaced before its turn came
                    await self._pacer.take()
                    method, data = subscription._method, subscription._subscribe_data()
                    subscription._awaiting_ack = True
                else:
                    if current is not None:
                        continue  # followed again meanwhile: stay subscribed
                    await self._pacer.take()
                    method, data = "unsubscribe", subscription._target()
                await ws.send(json.dumps({"method": method, "data": data}))
        except ConnectionClosed:
            return
        except Exception:
            logger.exception("The execution stream's writer failed: reconnecting.")
            ws.transport.abort()

    async def _handle(self, message: str | bytes) -> None:
        self._last_frame_at = time.monotonic()
        frame = _parse(message)
        if frame is None:
            return
        method = frame.get("method")
        channel = frame.get("channel")
        if not isinstance(method, str):
            return
        if method in _EVENT_KINDS and isinstance(channel, str):
            await self._on_event(_key_of(_EVENT_KINDS[method], channel), method, frame)
        elif method in _ACK_KINDS and isinstance(channel, str):
            self._on_subscribed(_key_of(_ACK_KINDS[method], channel), frame.get("data"))
        elif method == "error":
            self._on_error(channel, str(frame.get("error") or ""))

    async def _on_event(self, key: _Key, method: str, frame: dict[str, Any]) -> None:
        subscription = self._subscriptions.get(key)
        if subscription is None or not subscription.active:
            return
        seq = frame.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            self._end_subscription(
                subscription,
                ProtocolError("An execution event arrived without its seq.", key[1]),
            )
            return
        if subscription._received is not None and seq <= subscription._received:
            return  # already received (a replay overlapping what came before)
        try:
            result = subscription._item(method, frame.get("data"))
        except ValidationError as exc:
            error = f"Execution event #{seq} is not a valid {exc.title}: {exc}"
            self._end_subscription(subscription, ProtocolError(error, key[1]))
            return
        subscription._accept(seq)
        if subscription._queue.full():
            self._delivering = True  # the consumer is behind: no heartbeat verdict meanwhile
            try:
                await subscription._queue.put((seq, result))
            finally:
                self._delivering = False
                self._last_frame_at = time.monotonic()
        else:
            subscription._queue.put_nowait((seq, result))

    def _on_subscribed(self, key: _Key, data: Any) -> None:
        subscription = self._subscriptions.get(key)
        if subscription is None or not subscription._awaiting_ack:
            return
        subscription._awaiting_ack = False
        try:
            head, oldest, truncated = (
                int(data["head"]),
                int(data["oldest"]),
                bool(data["truncated"]),
            )
        except (KeyError, TypeError, ValueError):
            error = "The subscribe reply carries no head: the server does not number events."
            self._end_subscription(subscription, ProtocolError(error, key[1]))
            return
        subscription._on_ack(head, oldest, truncated)

    def _on_error(self, channel: Any, error: str) -> None:
        if isinstance(channel, str):
            # The answer to a request about that graph or execution: it ends that one only.
            # A graph followed under the exact name wins over an execution's channel.
            subscription = self._subscriptions.get(("graph", channel)) or self._subscriptions.get(
                _key_of("execution", channel)
            )
            if subscription is None:
                logger.info("Error about %r, no longer followed: %s", channel, error)
                return
            self._end_subscription(subscription, subscription._refusal(error))
            return
        if error.startswith(ErrorText.RATE_LIMITED.split(":")[0]):
            logger.warning("The server ignored a request over its rate limit: %s", error)
            outbox = self._outbox
            for waiting in self._subscriptions.values():
                if waiting._awaiting_ack and outbox is not None:
                    asyncio.get_running_loop().call_later(
                        RATE_LIMITED_RETRY_SECONDS, outbox.put_nowait, ("subscribe", waiting)
                    )
            return
        # The reason of the close that follows (daphne does not transmit close reasons).
        logger.debug("The server says: %s", error)
        self._close_hint = error

    def _end_subscription(self, subscription: Subscription, reason: BaseException) -> None:
        if self._subscriptions.get(subscription.key) is subscription:
            del self._subscriptions[subscription.key]
        subscription._end(reason)

    async def _unsubscribe(self, subscription: Subscription) -> None:
        if self._subscriptions.get(subscription.key) is subscription:
            del self._subscriptions[subscription.key]
            if self._outbox is not None and not self._closing:
                self._outbox.put_nowait(("unsubscribe", subscription))
        subscription._end(_Ended())


def connect(
    url: str,
    token: TokenSource | None = None,
    *,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    reconnect: Reconnect | None = None,
    open_timeout: float = 10.0,
    max_buffered: int = DEFAULT_MAX_BUFFERED,
    on_state: StateCallback | None = None,
    **websocket_options: Any,
) -> ExecutionStream:
    """A stream to open with ``async with``: ``async with connect(url, token=...) as stream``.

    ``token`` goes in the handshake's ``Authorization: Bearer`` header, never in the URL (a
    ``token`` query parameter of `url` is dropped when one is given); it is a string, or a
    callable, sync or async, called for each connection attempt so a long-lived client can mint
    fresh tokens. ``on_state(state, detail)`` is called on every change of ``ConnectionState``.
    ``websocket_options`` go to ``websockets.asyncio.client.connect`` (``ssl``,
    ``additional_headers``, ``proxy``...).
    """
    return ExecutionStream(
        url,
        token,
        heartbeat_interval=heartbeat_interval,
        reconnect=reconnect,
        open_timeout=open_timeout,
        max_buffered=max_buffered,
        on_state=on_state,
        **websocket_options,
    )


# --- helpers ------------------------------------------------------------------------------


def _without_token(url: str) -> str:
    """`url` without its ``token`` query parameters (the header carries the token)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in query if key != "token"]
    if len(kept) == len(query):
        return url
    return urlunsplit(parts._replace(query=urlencode(kept)))


def _with_authorization(given: HeadersLike | None, token: str) -> Headers:
    """The caller's extra handshake headers, with ``Authorization: Bearer`` for `token`."""
    headers = Headers(given) if given is not None else Headers()
    if "Authorization" in headers:
        del headers["Authorization"]
    headers["Authorization"] = f"Bearer {token}"
    return headers


def _parse(message: str | bytes) -> dict[str, Any] | None:
    if isinstance(message, bytes):
        logger.warning("Ignoring a binary frame from the server.")
        return None
    try:
        frame = json.loads(message)
    except ValueError:
        logger.warning("Ignoring a frame that is not JSON: %.100r", message)
        return None
    if not isinstance(frame, dict):
        logger.warning("Ignoring a frame that is not a JSON object: %.100r", message)
        return None
    return frame


def _close_code(closed: ConnectionClosed) -> int:
    if closed.rcvd is not None:
        return closed.rcvd.code
    if closed.sent is not None:
        return closed.sent.code
    return _NO_CLOSE_FRAME


def _describe_close(closed: ConnectionClosed, hint: str | None = None) -> str:
    code = _close_code(closed)
    reason = (closed.rcvd.reason if closed.rcvd is not None else "") or hint
    if code == _NO_CLOSE_FRAME:
        return "connection dropped"
    return f"closed with {code}" + (f" ({reason})" if reason else "")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
