"""The WebSocket endpoint: subscriptions per graph, fed by the process's fan-out."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer

from executions import catchup, conf, history, metrics, revocation, servers
from executions.auth import AUTH_ERROR_KEY, chosen_subprotocol
from executions.fanout import local_fanout
from executions.history import StoredEvent
from executions.inbound import decode_client_message, subscription_request
from executions.limits import TokenBucket, open_connections
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
from executions.schemas import ClientMessage, Methods, SubscriptionRequest

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
    """What one connection has been sent of one graph."""

    numbered: bool  # frames carry "seq": the client subscribed with since or snapshot
    delivered: int  # the last sequence number this connection has been sent


class ExecutionStreamConsumer(AsyncJsonWebsocketConsumer):
    """One client connection: authenticates, then follows the graphs it subscribes to.

    Each graph's events reach the client once and in sequence order: a number already sent is
    dropped, and a number past the next one first brings the missing ones from the history
    (they are committed: numbers are handed out one transaction at a time).
    """

    subscriptions: dict[str, Subscription]
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
        self._counted_user = None
        self._credential = None
        self._revoked: str | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_check: asyncio.Future[None] | None = None
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

    def enqueue(self, event: dict[str, Any]) -> None:
        """Take an event from the fan-out; never blocks, whatever the client's pace.

        A parked connection whose socket takes frames at once sends the event on the spot,
        without waking its task: the fan-out then sends to each local subscriber in turn, as an
        in-process connection manager would. Anything that needs the task (a gap to fill from
        the history, a full socket, events already waiting, a server without direct frames)
        goes to the backlog, behind what is there.
        """
        if self._closing or self._revoked is not None:
            return
        if self._idle and not self.backlog and self._direct_frames is not None and self._writable():
            subscription, seq = self._wanted(event)
            if subscription is None:
                return
            if seq == subscription.delivered + 1 and self._written_on_the_spot(subscription, event):
                return
        self.backlog.put(event)

    def _written_on_the_spot(self, subscription: Subscription, event: dict[str, Any]) -> bool:
        try:
            written = self._write_directly(subscription, event["seq"], event["frame"])
        except Exception:
            # Never let one socket stop the fan-out to the others: the task retries through
            # the server's own send, which closes the connection its way if it is broken.
            logger.exception("writing a frame straight to the socket failed")
            return False
        if written:
            self._observe_latency(event)
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
        subscription, seq = self._wanted(event)
        if subscription is None:
            return
        graph_id = event["graph_id"]
        missing = await catchup.missing_before(graph_id, subscription.delivered, seq)
        await self._send_events(subscription, missing)
        await self._send_event(subscription, seq, event["frame"])
        self._observe_latency(event)

    def _wanted(self, event: dict[str, Any]) -> tuple[Subscription | None, int]:
        """The subscription an event is for, or None when it was sent already or is not wanted."""
        seq: int = event["seq"]
        subscription = self.subscriptions.get(event["graph_id"])
        if subscription is None or seq <= subscription.delivered:
            return None, seq
        return subscription, seq

    @staticmethod
    def _observe_latency(event: dict[str, Any]) -> None:
        if "published_at" in event:
            metrics.PUBLISH_TO_SEND_SECONDS.observe(time.time() - event["published_at"])

    async def subscribe(self, message: ClientMessage) -> None:
        request = subscription_request(message)
        graph_id = request.graph_id
        refusal = await database_sync_to_async(revocation.refusal_now)(self.scope)
        if refusal is not None:
            self.revoke(refusal)
            return
        if not await self._may_subscribe(graph_id):
            self._log("websocket.subscribe_refused")
            raise ProtocolViolation("not_allowed", ErrorText.NOT_ALLOWED, graph_id)
        limit = conf.get("EXECUTIONS_MAX_SUBSCRIPTIONS_PER_CONNECTION")
        if graph_id not in self.subscriptions and len(self.subscriptions) >= limit:
            error = ErrorText.TOO_MANY_SUBSCRIPTIONS.format(limit=limit)
            raise ProtocolViolation("subscription_limit", error, graph_id)
        if graph_id not in self.subscriptions:
            metrics.SUBSCRIPTIONS.inc()
        await local_fanout(self.channel_layer).add(graph_id, self)
        # Read after joining: whatever is published from here on also arrives live.
        position = await database_sync_to_async(history.position)(graph_id)
        if not request.numbered:
            self.subscriptions.setdefault(graph_id, Subscription(False, position.head))
            await self._acknowledge(ack_frame(Methods.SUBSCRIBE, graph_id))
            return
        self.subscriptions[graph_id] = await self._catch_up(request, position)

    async def unsubscribe(self, message: ClientMessage) -> None:
        graph_id = subscription_request(message).graph_id
        if self.subscriptions.pop(graph_id, None) is not None:
            metrics.SUBSCRIPTIONS.dec()
            await local_fanout(self.channel_layer).discard(graph_id, self)
        await self.send(text_data=ack_frame(Methods.UNSUBSCRIBE, graph_id))

    async def heartbeat(self, message: ClientMessage) -> None:
        await self.send(text_data=heartbeat_frame())

    async def refuse_server_method(self, message: ClientMessage) -> None:
        raise ProtocolViolation("not_processed", ErrorText.NOT_PROCESSED)

    handlers: dict[Methods, Handler] = {
        Methods.SUBSCRIBE: subscribe,
        Methods.UNSUBSCRIBE: unsubscribe,
        Methods.HEARTBEAT: heartbeat,
        Methods.EXECUTION_EVENT: refuse_server_method,
        Methods.ERROR: refuse_server_method,
    }

    async def _catch_up(
        self, request: SubscriptionRequest, position: history.StreamPosition
    ) -> Subscription:
        """Acknowledge with the head, then send history or the latest state up to the head."""
        graph_id = request.graph_id
        truncated = request.since is not None and position.is_truncated_after(request.since)
        ack = ack_frame(Methods.SUBSCRIBE, graph_id, position.describe(truncated))
        await self._acknowledge(ack)
        subscription = Subscription(numbered=True, delivered=0)
        if request.since is not None:
            await self._replay(
                subscription, graph_id, position.replay_start(request.since), position.head
            )
        else:
            state = await database_sync_to_async(history.latest_state)(graph_id, position.head)
            await self._send_events(subscription, state)
        subscription.delivered = position.head
        return subscription

    async def _replay(
        self, subscription: Subscription, graph_id: str, after: int, until: int
    ) -> None:
        async for page in catchup.replay_pages(graph_id, after, until, self._ready_for_more):
            await self._send_events(subscription, page)

    async def _send_events(self, subscription: Subscription, events: Iterable[StoredEvent]) -> None:
        for event in events:
            await self._send_event(subscription, event.seq, event.frame)

    async def _send_event(self, subscription: Subscription, seq: int, frame: str) -> None:
        if self._revoked is not None:
            return  # nothing more of any graph once the authentication has ended
        if not self._write_directly(subscription, seq, frame):
            text = numbered_frame(frame, seq) if subscription.numbered else frame
            await self._server_send({"type": "websocket.send", "text": text})
            self._sent(subscription, seq)

    def _write_directly(self, subscription: Subscription, seq: int, frame: str) -> bool:
        """Write the frame straight to the socket; False when this connection cannot."""
        frames = self._direct_frames
        if frames is None:
            return False
        text = numbered_frame(frame, seq) if subscription.numbered else frame
        if not frames.send_text(text):
            return False
        self._sent(subscription, seq)
        return True

    @staticmethod
    def _sent(subscription: Subscription, seq: int) -> None:
        subscription.delivered = seq
        metrics.FRAMES_DELIVERED.inc()

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
        self._arm_expiry(credential.expires_at)

    def _arm_expiry(self, expires_at: float | None) -> None:
        if expires_at is not None:
            delay = max(0.0, expires_at - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        credential = self._credential
        if credential is None:
            return
        if credential.session_key is None:
            self.revoke(ErrorText.TOKEN_EXPIRED)
            return
        # A session's end moves when the session is saved again: look before closing.
        self._expiry_check = asyncio.ensure_future(self._check_session_end())

    async def _check_session_end(self) -> None:
        try:
            refusal = await database_sync_to_async(revocation.refusal_now)(self.scope)
        except Exception:
            # The database did not answer: end the connection rather than outlive the session.
            logger.exception("checking whether a session has ended failed")
            refusal = ErrorText.SESSION_ENDED
        if refusal is not None:
            self.revoke(refusal)
            return
        credential = await database_sync_to_async(revocation.credential_of)(self.scope)
        if credential.expires_at is not None and credential.expires_at > time.time():
            self._arm_expiry(credential.expires_at)

    async def _stop_following_revocations(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._expiry_check is not None:
            self._expiry_check.cancel()
            self._expiry_check = None
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
        for graph_id in self.subscriptions:
            await fanout.discard(graph_id, self)
        metrics.SUBSCRIPTIONS.dec(len(self.subscriptions))
        self.subscriptions = {}

    async def _admit(self, user_key: object) -> None:
        """Count the connection in, or close it when a connection limit is reached."""
        over = open_connections.admit(
            user_key,
            max_total=conf.get("EXECUTIONS_MAX_CONNECTIONS"),
            max_per_user=conf.get("EXECUTIONS_MAX_CONNECTIONS_PER_USER"),
        )
        if over == "process":
            await self._close_with_error(CloseCode.SERVER_FULL, ErrorText.SERVER_FULL)
        elif over == "user":
            limit = conf.get("EXECUTIONS_MAX_CONNECTIONS_PER_USER")
            reason = ErrorText.TOO_MANY_CONNECTIONS.format(limit=limit)
            await self._close_with_error(CloseCode.TOO_MANY_CONNECTIONS, reason)
        else:
            self._counted_user = user_key
            metrics.CONNECTIONS.inc()
            self._log("websocket.connect")
            await self._follow_revocations()
        if over is not None:
            self._log("websocket.connection_limit", limit=over)

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
        policy = conf.subscribe_policy()
        return bool(await database_sync_to_async(policy)(self.scope["user"], graph_id))
