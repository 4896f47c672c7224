"""The WebSocket endpoint: subscriptions per graph, fed by the process's fan-out."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer

from executions import catchup, conf, history, metrics, revocation, servers
from executions.auth import AUTH_ERROR_KEY, chosen_subprotocol
from executions.channels import (
    GraphExecutionsView,
    GraphView,
    View,
    execution_channel,
    graph_executions_channel,
)
from executions.fanout import local_fanout
from executions.following import execution_followed, may_follow_graph
from executions.history import StoredEvent
from executions.inbound import (
    decode_client_message,
    execution_subscription_request,
    subscription_request,
)
from executions.limits import TokenBucket, admit_connection, open_connections
from executions.outbox import Backlog
from executions.protocol import (
    CloseCode,
    ErrorText,
    ProtocolViolation,
    ack_frame,
    close_reason,
    error_frame,
    heartbeat_frame,
    numbered_frame,
)
from executions.schemas import ClientMessage, Methods, Resumable

logger = logging.getLogger(__name__)


def _utf8_length_over(text: str, limit: int) -> bool:
    # A character takes at most 4 bytes: short texts need no encoding to be measured.
    return len(text) * 4 > limit and len(text.encode("utf-8", "replace")) > limit


Handler = Callable[["ExecutionStreamConsumer", ClientMessage], Awaitable[None]]

# While the transport is full, how often to look again at the backlog and the client.
STALL_POLL_SECONDS = 0.25
# How long a closing error frame and close may wait for room in a stalled client's socket.
SLOW_CLOSE_SECONDS = 5.0


@dataclass(slots=True)
class Subscription:
    """What one connection has been sent of one graph's stream, through one view of it."""

    graph_id: str  # the stream followed
    view: View  # what of it this subscription gets, as which frames
    channel: str  # named by acknowledgements and errors
    numbered: bool  # frames carry "seq": the client subscribed with since or snapshot
    delivered: int = 0  # the last sequence number of the stream this subscription has passed


# What a subscription follows: ("graph", graph_id) for the original protocol's subscribe,
# ("execution", graph_exec_id) and ("executions", graph_id) for AutoGPT's current one.
SubscriptionKey = tuple[str, str]
# Produces a subscription's snapshot: the stored events up to a head (history.latest_state...).
Snapshot = Callable[[int], list[StoredEvent]]


class ExecutionStreamConsumer(AsyncJsonWebsocketConsumer):
    """One client connection: authenticates, then follows the graphs it subscribes to.

    Each graph's events reach the client once and in sequence order: a number already sent is
    dropped, and a number past the next one first brings the missing ones from the history
    (they are committed: numbers are handed out one transaction at a time).
    """

    subscriptions: dict[SubscriptionKey, Subscription]
    _counted_user: object | None
    _credential: revocation.Credential | None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Instead of channels' loop (a layer channel per connection, a task per message), the
        # connection reads its client and the backlog the process's fan-out fills.
        self.scope = scope
        self.channel_layer = get_channel_layer()
        self.channel_name = f"connection.{id(self):x}"
        self.base_send = send
        hooks = servers.connection_hooks(send)
        self._server_send = hooks.send
        self._pressure = hooks.pressure
        self._direct_frames = hooks.frames
        self._idle = False
        self.backlog = Backlog(conf.get("EXECUTIONS_MAX_BACKLOG_BYTES"))
        self._closing = False
        self.subscriptions = {}
        # The same subscriptions by the graph whose stream each follows.
        self._following: dict[str, dict[SubscriptionKey, Subscription]] = {}
        # Graphs whose fan-out a subscribe joined but never finished starting (it failed or was
        # cancelled mid catch-up): left at release with the others.
        self._stray: set[str] = set()
        self._counted_user = None
        self._credential = None
        self._revoked: str | None = None
        self._expiry: revocation.ExpiryWatch | None = None
        try:
            await self._serve(receive)
        except StopConsumer:
            pass
        finally:
            # Also after a crash: no connection slot, count or membership stays behind.
            await self._release()

    async def _serve(self, receive: Any) -> None:
        incoming = self._next_client_message(receive)
        try:
            while True:
                if self._revoked is not None and not self._closing:
                    await self._close_revoked(self._revoked)
                elif incoming.done():
                    message = incoming.result()
                    incoming = self._next_client_message(receive)
                    await self.dispatch(message)
                elif self._closing:
                    await asyncio.wait((incoming,))
                elif self.backlog.overflowed:
                    await self._close_slow_consumer()
                elif self.backlog and self._writable():
                    await self.execution_result(self.backlog.pop())
                elif self.backlog:
                    await self._wait_until_writable(incoming)
                else:
                    # Parked with nothing to do: the fan-out may send in-order events itself.
                    self._idle = True
                    try:
                        await self.backlog.wait()
                    finally:
                        self._idle = False
        finally:
            incoming.cancel()

    def _next_client_message(self, receive: Any) -> "asyncio.Future[Any]":
        incoming = asyncio.ensure_future(receive())
        incoming.add_done_callback(self.backlog.wake)  # a client message ends a backlog wait
        return incoming

    def enqueue(self, event: dict[str, Any]) -> int:
        """Take an event from the fan-out; never blocks, whatever the client's pace.

        A parked connection whose socket takes frames at once sends the event on the spot,
        without waking its task: the fan-out then sends to each local subscriber in turn, as an
        in-process connection manager would. Anything that needs the task (a gap to fill from
        the history, a full socket, events already waiting, a server without direct frames)
        goes to the backlog, behind what is there. Returns the frames written on the spot.
        """
        if self._closing or self._revoked is not None:
            return 0
        parked = self._idle and not self.backlog and self._direct_frames is not None
        if parked and self._writable():
            written = self._written_on_the_spot(event)
            if written is not None:
                return written
        self.backlog.put(event)
        return 0

    def _written_on_the_spot(self, event: dict[str, Any]) -> int | None:
        """Write an in-order event to every subscription that wants it; return the frames
        written, or None: the task must."""
        following = self._following.get(event["graph_id"])
        if not following:
            return 0  # nothing here follows its graph (any more)
        seq = event["seq"]
        subscriptions = following.values()
        if len(following) == 1:
            # The common case, and the fan-out's hot path: no generator per connection.
            (only,) = subscriptions
            if seq > only.delivered + 1:
                return None  # a gap to fill from the history first
        elif any(seq > subscription.delivered + 1 for subscription in subscriptions):
            return None
        written = 0
        try:
            for subscription in subscriptions:
                if seq > subscription.delivered:
                    framed = self._write_directly(subscription, seq, event)
                    if framed is None:
                        return None
                    written += framed
        except Exception:
            # Never let one socket stop the fan-out to the others: the task retries through
            # the server's own send, which closes the connection its way if it is broken.
            logger.exception("writing a frame straight to the socket failed")
            return None
        return written

    async def connect(self) -> None:
        self._messages = TokenBucket(
            conf.get("EXECUTIONS_MESSAGES_PER_SECOND"), conf.get("EXECUTIONS_MESSAGE_BURST")
        )
        # Refused messages drain this one; once it is empty the client is closed.
        self._patience = TokenBucket(1, conf.get("EXECUTIONS_MESSAGE_BURST"))
        await self.accept(chosen_subprotocol(self.scope))
        refusal = self._authentication_refusal()
        if refusal:
            metrics.AUTH_FAILURES.labels(refusal).inc()
            self._log("websocket.auth_failure", reason=refusal)
            await self._close_with_error(CloseCode.UNAUTHENTICATED, refusal)
            return
        await self._admit(self.scope["user"].pk)

    async def disconnect(self, code: int) -> None:
        await self._release(code)

    async def _release(self, code: int | None = None) -> None:
        """Give back what this connection holds; safe to call more than once."""
        try:
            await self._drop_subscriptions()
            await self._stop_following_revocations()
        finally:
            # Even when the layer failed to let go: the connection slot is this process's own.
            if self._counted_user is not None:
                open_connections.release(self._counted_user)
                metrics.CONNECTIONS.dec()
                self._log("websocket.disconnect", code=code)
                self._counted_user = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self._messages.take():
            await self._refuse_over_rate()
            return
        limit = conf.get("EXECUTIONS_MAX_MESSAGE_BYTES")
        if text_data is not None and _utf8_length_over(text_data, limit):
            reason = ErrorText.MESSAGE_TOO_BIG.format(limit=limit)
            await self._close_with_error(CloseCode.MESSAGE_TOO_BIG, reason)
            return
        try:
            if text_data is None:
                raise ProtocolViolation("binary", ErrorText.BINARY)
            message = decode_client_message(text_data)
            await self.handlers[message.method](self, message)
        except ProtocolViolation as violation:
            metrics.ERROR_FRAMES.labels(violation.kind).inc()
            await self.send(text_data=violation.frame())

    async def execution_result(self, event: dict[str, Any]) -> None:
        """Forward a published event, already serialized once by the publisher."""
        graph_id, seq = event["graph_id"], event["seq"]
        for subscription in tuple(self._following.get(graph_id, {}).values()):
            if seq <= subscription.delivered:
                continue
            missing = await catchup.missing_before(graph_id, subscription.delivered, seq)
            await self._send_events(subscription, missing)
            await self._send_event(subscription, seq, event)
        metrics.observe_publish_to_send(event)

    async def subscribe(self, message: ClientMessage) -> None:
        """The original protocol: every node result of a graph."""
        request = subscription_request(message)
        graph_id = request.graph_id
        if not await self._still_authenticated():
            return
        if not await self._may_subscribe(graph_id):
            self._log("websocket.subscribe_refused")
            raise ProtocolViolation("not_allowed", ErrorText.NOT_ALLOWED, graph_id)
        subscription = Subscription(graph_id, GraphView(), graph_id, request.numbered)
        snapshot = partial(history.latest_state, graph_id)
        await self._follow(("graph", graph_id), subscription, Methods.SUBSCRIBE, request, snapshot)

    async def subscribe_graph_execution(self, message: ClientMessage) -> None:
        """AutoGPT's protocol: the node and graph events of one execution."""
        request = execution_subscription_request(message)
        graph_exec_id = request.graph_exec_id
        channel = execution_channel(self._user_id(), graph_exec_id)
        if not await self._still_authenticated():
            return
        user = self.scope["user"]
        followed = await database_sync_to_async(execution_followed)(user, graph_exec_id)
        # Another user's execution is refused exactly as one that does not exist.
        if followed is None:
            self._log("websocket.subscribe_refused")
            raise ProtocolViolation("not_allowed", ErrorText.NO_SUCH_EXECUTION, channel)
        graph_id, view = followed
        subscription = Subscription(graph_id, view, channel, request.numbered)
        snapshot = partial(history.latest_state, graph_id, graph_exec_id=graph_exec_id)
        key = ("execution", graph_exec_id)
        await self._follow(key, subscription, Methods.SUBSCRIBE_GRAPH_EXEC, request, snapshot)

    async def subscribe_graph_executions(self, message: ClientMessage) -> None:
        """AutoGPT's protocol: the graph events of every execution of a graph."""
        request = subscription_request(message)
        graph_id = request.graph_id
        channel = graph_executions_channel(self._user_id(), graph_id)
        if not await self._still_authenticated():
            return
        if not await self._may_subscribe(graph_id):
            self._log("websocket.subscribe_refused")
            raise ProtocolViolation("not_allowed", ErrorText.NOT_ALLOWED, channel)
        view = GraphExecutionsView(channel)
        subscription = Subscription(graph_id, view, channel, request.numbered)
        snapshot = partial(history.latest_runs, graph_id)
        key = ("executions", graph_id)
        await self._follow(key, subscription, Methods.SUBSCRIBE_GRAPH_EXECS, request, snapshot)

    async def _still_authenticated(self) -> bool:
        """Look at the credential again; a revoked one closes the connection instead."""
        refusal = await database_sync_to_async(revocation.refusal_now)(self.scope)
        if refusal is not None:
            self.revoke(refusal)
            return False
        return True

    async def _follow(
        self,
        key: SubscriptionKey,
        subscription: Subscription,
        method: Methods,
        request: Resumable,
        snapshot: Snapshot,
    ) -> None:
        """Start (or restart) a subscription: join its graph's fan-out, acknowledge, catch up."""
        limit = conf.get("EXECUTIONS_MAX_SUBSCRIPTIONS_PER_CONNECTION")
        if key not in self.subscriptions and len(self.subscriptions) >= limit:
            error = ErrorText.TOO_MANY_SUBSCRIPTIONS.format(limit=limit)
            raise ProtocolViolation("subscription_limit", error, subscription.channel)
        graph_id = subscription.graph_id
        await local_fanout(self.channel_layer).add(graph_id, self)
        try:
            # Read after joining: whatever is published from here on also arrives live.
            position = await database_sync_to_async(history.position)(graph_id)
            if not request.numbered:
                if key not in self.subscriptions:
                    subscription.delivered = position.head
                    await self._add(key, subscription)
                await self._acknowledge(ack_frame(method, subscription.channel))
                return
            await self._catch_up(subscription, method, request, position, snapshot)
        except BaseException:
            if graph_id not in self._following:
                self._stray.add(graph_id)
            raise
        await self._add(key, subscription)

    async def _add(self, key: SubscriptionKey, subscription: Subscription) -> None:
        """Count a started subscription in, in place of the one it restarts."""
        replaced = self.subscriptions.get(key)
        if replaced is not None and replaced.graph_id != subscription.graph_id:
            await self._unfollow(key)  # an execution id now found in another graph
            replaced = None
        if replaced is None:
            metrics.SUBSCRIPTIONS.inc()
        self.subscriptions[key] = subscription
        self._following.setdefault(subscription.graph_id, {})[key] = subscription
        self._stray.discard(subscription.graph_id)

    async def _unfollow(self, key: SubscriptionKey) -> Subscription | None:
        """End a subscription; leave its graph's fan-out when it was the last on that graph."""
        subscription = self.subscriptions.pop(key, None)
        if subscription is None:
            return None
        metrics.SUBSCRIPTIONS.dec()
        following = self._following.get(subscription.graph_id, {})
        following.pop(key, None)
        if not following:
            self._following.pop(subscription.graph_id, None)
            await local_fanout(self.channel_layer).discard(subscription.graph_id, self)
        return subscription

    async def unsubscribe(self, message: ClientMessage) -> None:
        """``{graph_id}`` ends a subscribe; ``{graph_exec_id}`` (AutoGPT's) a
        subscribe_graph_execution; ``{channel}`` any subscription of AutoGPT's protocol."""
        data = message.data
        if isinstance(data, dict) and "graph_id" not in data:
            if "graph_exec_id" in data:
                graph_exec_id = execution_subscription_request(message).graph_exec_id
                await self._unfollow(("execution", graph_exec_id))
                channel = execution_channel(self._user_id(), graph_exec_id)
                await self.send(text_data=ack_frame(Methods.UNSUBSCRIBE, channel))
                return
            named = data.get("channel")
            if isinstance(named, str) and named:
                await self._unsubscribe_channel(named)
                return
        graph_id = subscription_request(message).graph_id
        await self._unfollow(("graph", graph_id))
        await self.send(text_data=ack_frame(Methods.UNSUBSCRIBE, graph_id))

    async def _unsubscribe_channel(self, channel: str) -> None:
        for key, subscription in tuple(self.subscriptions.items()):
            if key[0] != "graph" and subscription.channel == channel:
                await self._unfollow(key)
                break
        await self.send(text_data=ack_frame(Methods.UNSUBSCRIBE, channel))

    def _user_id(self) -> str:
        """The connection's user, as AutoGPT's channel names spell it."""
        return str(self.scope["user"].pk)

    async def heartbeat(self, message: ClientMessage) -> None:
        await self.send(text_data=heartbeat_frame())

    async def refuse_server_method(self, message: ClientMessage) -> None:
        raise ProtocolViolation("not_processed", ErrorText.NOT_PROCESSED)

    handlers: dict[Methods, Handler] = {
        Methods.SUBSCRIBE: subscribe,
        Methods.SUBSCRIBE_GRAPH_EXEC: subscribe_graph_execution,
        Methods.SUBSCRIBE_GRAPH_EXECS: subscribe_graph_executions,
        Methods.UNSUBSCRIBE: unsubscribe,
        Methods.HEARTBEAT: heartbeat,
        Methods.EXECUTION_EVENT: refuse_server_method,
        Methods.GRAPH_EXECUTION_EVENT: refuse_server_method,
        Methods.NODE_EXECUTION_EVENT: refuse_server_method,
        Methods.ERROR: refuse_server_method,
    }

    async def _catch_up(
        self,
        subscription: Subscription,
        method: Methods,
        request: Resumable,
        position: history.StreamPosition,
        snapshot: Snapshot,
    ) -> None:
        """Acknowledge with the head, then send history or the latest state up to the head."""
        truncated = request.since is not None and position.is_truncated_after(request.since)
        ack = ack_frame(method, subscription.channel, position.describe(truncated))
        await self._acknowledge(ack)
        if request.since is not None:
            await self._replay(subscription, position.replay_start(request.since), position.head)
        else:
            state = await database_sync_to_async(snapshot)(position.head)
            await self._send_events(subscription, state)
        subscription.delivered = position.head

    async def _replay(self, subscription: Subscription, after: int, until: int) -> None:
        pages = catchup.replay_pages(subscription.graph_id, after, until, self._ready_for_more)
        async for page in pages:
            await self._send_events(subscription, page)

    async def _send_events(self, subscription: Subscription, events: Iterable[StoredEvent]) -> None:
        for event in events:
            await self._send_event(subscription, event.seq, event.message())

    async def _send_event(
        self, subscription: Subscription, seq: int, event: Mapping[str, Any]
    ) -> None:
        if self._revoked is not None:
            return  # nothing more of any graph once the authentication has ended
        framed = self._write_directly(subscription, seq, event)
        if framed is None:
            text = self._text(subscription, seq, event)
            if text is not None:
                await self._server_send({"type": "websocket.send", "text": text})
            subscription.delivered = seq
            framed = int(text is not None)
        if framed:
            metrics.FRAMES_DELIVERED.inc()

    def _write_directly(
        self, subscription: Subscription, seq: int, event: Mapping[str, Any]
    ) -> int | None:
        """Write the subscription's frame of an event straight to the socket, or pass an event
        it does not show: 1 or 0 frames written; None when this connection cannot."""
        frames = self._direct_frames
        if frames is None:
            return None
        text = self._text(subscription, seq, event)
        if text is not None and not frames.send_text(text):
            return None
        subscription.delivered = seq
        return int(text is not None)

    @staticmethod
    def _text(subscription: Subscription, seq: int, event: Mapping[str, Any]) -> str | None:
        frame = subscription.view.render(event)
        if frame is None:
            return None
        return numbered_frame(frame, seq) if subscription.numbered else frame

    def _writable(self) -> bool:
        return self._pressure is None or self._pressure.writable.is_set()

    async def _wait_until_writable(self, incoming: "asyncio.Future[Any]") -> None:
        """Wait, a bounded while, for the transport to drain or the client to say something."""
        if self._pressure is None:
            return
        drained = asyncio.ensure_future(self._pressure.writable.wait())
        try:
            await asyncio.wait(
                (incoming, drained), timeout=STALL_POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            drained.cancel()

    async def _ready_for_more(self) -> bool:
        """During a replay: wait for the transport to drain; False once the client is too slow."""
        pressure = self._pressure
        while pressure is not None and not pressure.writable.is_set():
            if self.backlog.overflowed or self._closing or self._revoked is not None:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pressure.writable.wait(), STALL_POLL_SECONDS)
        return not self._closing and self._revoked is None

    async def _acknowledge(self, ack: str) -> None:
        # A subscribe that outlived the connection's authentication gets no answer but the close.
        if self._revoked is None:
            await self.send(text_data=ack)

    def revoke(self, reason: str) -> None:
        """The connection lost its authentication: close with 4001 and `reason`, sending nothing
        more of any graph (the fan-out calls this; it must not block)."""
        if self._closing or self._revoked is not None:
            return
        self._revoked = reason
        self.backlog.wake()

    async def _follow_revocations(self) -> None:
        """Be closed when the credential is revoked anywhere, or when it expires."""
        credential = await database_sync_to_async(revocation.credential_of)(self.scope)
        self._credential = credential
        await local_fanout(self.channel_layer).track(self, credential)
        # A revocation sent between the handshake and now reached nobody: look once more.
        refusal = await database_sync_to_async(revocation.refusal_now)(self.scope)
        if refusal is not None:
            self.revoke(refusal)
            return
        self._expiry = revocation.ExpiryWatch(self.scope, self.revoke, catchup.on_shared_thread)
        self._expiry.arm(credential)

    async def _stop_following_revocations(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._credential is not None:
            await local_fanout(self.channel_layer).untrack(self, self._credential)
            self._credential = None

    async def _close_revoked(self, reason: str) -> None:
        metrics.CONNECTIONS_REVOKED.labels(reason).inc()
        self._log("websocket.revoked", reason=reason)
        await self._drop_subscriptions()
        await self._close_within(CloseCode.UNAUTHENTICATED, reason)

    async def _close_within(self, code: int, reason: str) -> None:
        """Close after an error frame; a client that takes neither in time is not waited for."""
        try:
            await asyncio.wait_for(self._close_with_error(code, reason), SLOW_CLOSE_SECONDS)
        except TimeoutError:
            raise StopConsumer from None

    async def _close_slow_consumer(self) -> None:
        """The backlog passed its limit: stop following graphs and close with 4008.

        daphne queues the error and the close behind the frames the client has not read;
        uvicorn's send waits for room in the socket instead. A client that reads nothing for
        SLOW_CLOSE_SECONDS more is not waited for: the connection ends without its close frame.
        """
        metrics.SLOW_CONSUMER_DISCONNECTS.inc()
        self._log("websocket.slow_consumer", backlog_bytes=self.backlog.size)
        await self._drop_subscriptions()
        await self._close_within(CloseCode.SLOW_CONSUMER, ErrorText.SLOW_CONSUMER)

    async def _drop_subscriptions(self) -> None:
        fanout = local_fanout(self.channel_layer)
        for graph_id in self._following.keys() | self._stray:
            await fanout.discard(graph_id, self)
        metrics.SUBSCRIPTIONS.dec(len(self.subscriptions))
        self.subscriptions = {}
        self._following = {}
        self._stray = set()

    async def _admit(self, user_key: object) -> None:
        """Count the connection in, or close it when a connection limit is reached."""
        refused = admit_connection(user_key)
        if refused is None:
            self._counted_user = user_key
            metrics.CONNECTIONS.inc()
            self._log("websocket.connect")
            await self._follow_revocations()
            return
        self._log("websocket.connection_limit", limit=refused.limit)
        by_user = refused.limit == "user"
        code = CloseCode.TOO_MANY_CONNECTIONS if by_user else CloseCode.SERVER_FULL
        await self._close_with_error(code, refused.reason)

    async def _refuse_over_rate(self) -> None:
        if self._patience.take():
            metrics.ERROR_FRAMES.labels("rate_limited").inc()
            rate = conf.get("EXECUTIONS_MESSAGES_PER_SECOND")
            await self.send(text_data=error_frame(ErrorText.RATE_LIMITED.format(rate=rate)))
        else:
            self._log("websocket.rate_limit_abuse")
            await self._close_with_error(CloseCode.RATE_LIMITED, ErrorText.RATE_LIMIT_ABUSED)

    def _log(self, event: str, **fields: object) -> None:
        """One structured log line about this connection; never anything of its credentials."""
        user = self.scope.get("user")
        client = self.scope.get("client") or (None, None)
        logger.info(
            event,
            extra={
                "event": event,
                "user_id": getattr(user, "pk", None),
                "client": client[0],
                "channel": self.channel_name,
                **fields,
            },
        )

    async def _close_with_error(self, code: int, reason: str) -> None:
        # daphne drops close reasons, so the reason also travels as an error frame first.
        self._closing = True
        await self.send(text_data=error_frame(reason))
        await self.close(code=code, reason=close_reason(reason))

    def _authentication_refusal(self) -> str | None:
        error = self.scope.get(AUTH_ERROR_KEY)
        if error:
            return str(error)
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return ErrorText.MISSING_TOKEN
        return None

    async def _may_subscribe(self, graph_id: str) -> bool:
        return await database_sync_to_async(may_follow_graph)(self.scope["user"], graph_id)
