"""WebSocket routing by the site's URLconf: the endpoint is wherever executions.urls is mounted.

``executions.urls.websocket`` names an HTTP route, ``executions-websocket``, whose view answers
426 to plain HTTP and carries the consumer. The router resolves each handshake's path against
the URLconf, so ``path("live/", include("executions.urls"))`` serves the WebSocket at
``/live/ws``, and ``reverse("executions-websocket")`` gives the page its URL.
"""

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from executions.consumers import ExecutionStreamConsumer
from executions.scope import path_info

ASGIApp = Any


def websocket_endpoint(request: HttpRequest) -> HttpResponse:
    """Plain HTTP at the WebSocket URL: say that it takes a WebSocket upgrade."""
    response = HttpResponse(
        "This URL is a WebSocket endpoint: connect with a WebSocket client.\n",
        status=426,
        content_type="text/plain; charset=utf-8",
    )
    response["Upgrade"] = "websocket"
    response["Connection"] = "Upgrade"
    return response


websocket_endpoint.websocket_consumer = ExecutionStreamConsumer.as_asgi()  # type: ignore[attr-defined]


class WebSocketRouter:
    """Hands each WebSocket to the consumer its path resolves to in the URLconf.

    A path that is not a WebSocket route of this app goes to `fallback` (a project's own
    channels router), or is refused at the handshake (403) when there is none.
    """

    def __init__(self, fallback: ASGIApp | None = None) -> None:
        self.fallback = fallback

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        consumer = consumer_for(path_info(scope))
        if consumer is not None:
            return await consumer(scope, receive, send)
        if self.fallback is not None:
            return await self.fallback(scope, receive, send)
        await send({"type": "websocket.close"})
        return None


def consumer_for(path: str) -> ASGIApp | None:
    """The consumer of the WebSocket route at `path`, or None."""
    try:
        match = resolve(path)
    except Resolver404:
        return None
    return getattr(match.func, "websocket_consumer", None)
