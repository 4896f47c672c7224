"""The WebSocket endpoint: subscriptions per graph on the channel layer."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from executions import conf, membership
from executions.auth import AUTH_ERROR_KEY
from executions.groups import graph_group_name
from executions.inbound import decode_client_message, subscription_request
from executions.protocol import (
    CloseCode,
    ErrorText,
    ProtocolViolation,
    ack_frame,
    error_frame,
    heartbeat_frame,
)
from executions.schemas import EXECUTION_RESULT_EVENT, ClientMessage, Methods

logger = logging.getLogger(__name__)

Handler = Callable[["ExecutionStreamConsumer", ClientMessage], Awaitable[None]]


class ExecutionStreamConsumer(AsyncJsonWebsocketConsumer):
    """One client connection: authenticates, then follows the graphs it subscribes to."""

    graph_ids: set[str]
    _refresher: asyncio.Task[None] | None

    async def connect(self) -> None:
        self.graph_ids = set()
        self._refresher = None
        await self.accept()
        refusal = self._authentication_refusal()
        if refusal:
            logger.info("websocket refused: %s", refusal)
            await self._close_with_error(CloseCode.UNAUTHENTICATED, refusal)

    async def disconnect(self, code: int) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for graph_id in self.graph_ids:
            await self._leave(graph_id)
        self.graph_ids = set()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self.send(text_data=error_frame(ErrorText.BINARY))
            return
        limit = conf.get("EXECUTIONS_MAX_MESSAGE_BYTES")
        if len(text_data) * 4 > limit and len(text_data.encode("utf-8", "replace")) > limit:
            reason = ErrorText.MESSAGE_TOO_BIG.format(limit=limit)
            await self._close_with_error(CloseCode.MESSAGE_TOO_BIG, reason)
            return
        try:
            message = decode_client_message(text_data)
            await self.handlers[message.method](self, message)
        except ProtocolViolation as violation:
            await self.send(text_data=violation.frame())

    async def dispatch(self, message: dict[str, Any]) -> None:
        # The hot path touches no database: skip the per-message thread hop that channels'
        # dispatch makes to close stale database connections.
        if message["type"] == EXECUTION_RESULT_EVENT:
            await self.execution_result(message)
        else:
            await super().dispatch(message)

    async def execution_result(self, event: dict[str, Any]) -> None:
        """Forward a published result, already serialized once by the publisher."""
        await self.send(text_data=event["frame"])

    async def subscribe(self, message: ClientMessage) -> None:
        graph_id = subscription_request(message).graph_id
        if not await self._may_subscribe(graph_id):
            logger.info("subscribe refused: user=%s", self.scope["user"].pk)
            raise ProtocolViolation(ErrorText.NOT_ALLOWED, graph_id)
        await self._join(graph_id)
        self.graph_ids.add(graph_id)
        self._keep_memberships_fresh()
        await self.send(text_data=ack_frame(Methods.SUBSCRIBE, graph_id))

    async def unsubscribe(self, message: ClientMessage) -> None:
        graph_id = subscription_request(message).graph_id
        if graph_id in self.graph_ids:
            self.graph_ids.discard(graph_id)
            await self._leave(graph_id)
        await self.send(text_data=ack_frame(Methods.UNSUBSCRIBE, graph_id))

    async def heartbeat(self, message: ClientMessage) -> None:
        await self.send(text_data=heartbeat_frame())

    async def refuse_server_method(self, message: ClientMessage) -> None:
        raise ProtocolViolation(ErrorText.NOT_PROCESSED)

    handlers: dict[Methods, Handler] = {
        Methods.SUBSCRIBE: subscribe,
        Methods.UNSUBSCRIBE: unsubscribe,
        Methods.HEARTBEAT: heartbeat,
        Methods.EXECUTION_EVENT: refuse_server_method,
        Methods.ERROR: refuse_server_method,
    }

    async def _close_with_error(self, code: int, reason: str) -> None:
        # daphne drops close reasons, so the reason also travels as an error frame first.
        await self.send(text_data=error_frame(reason))
        await self.close(code=code, reason=reason)

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

    def _keep_memberships_fresh(self) -> None:
        interval = membership.refresh_interval(self.channel_layer)
        if interval is not None and self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_memberships(interval))

    async def _refresh_memberships(self, interval: float) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(interval)
                for graph_id in list(self.graph_ids):
                    await self._join(graph_id)

    async def _join(self, graph_id: str) -> None:
        await membership.join(self.channel_layer, graph_group_name(graph_id), self.channel_name)

    async def _leave(self, graph_id: str) -> None:
        await membership.leave(self.channel_layer, graph_group_name(graph_id), self.channel_name)
