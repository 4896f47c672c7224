"""Baseline: a raw ``websockets`` (asyncio API) server fanning out with ``broadcast``.

Written by us. Subscribers connect to ``/ws`` and speak the executions app's protocol
(subscribe / unsubscribe / heartbeat, the same replies). ``websockets`` serves no HTTP POST, so
events come in over a publisher WebSocket on ``/publish``: each message is
``{"method": "publish", "data": <ExecutionResult or array>}``, validated like the app's ingest
body, serialized once per event (the same frame text as
``executions.schemas.execution_event_frame``), pushed to every subscriber of its graph with
``websockets.broadcast``, then acknowledged with
``{"method":"publish","data":{"accepted":N},"success":true,...}``. No authentication.

    python bench/baselines/websockets_server.py --port 8002
"""

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import ValidationError  # noqa: E402
from websockets.asyncio.server import ServerConnection, broadcast, serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from executions.schemas import ExecutionResult, execution_event_frame  # noqa: E402

subscriptions: dict[str, set[ServerConnection]] = {}


def reply(
    method: str,
    *,
    data: Any = None,
    success: bool = True,
    channel: str | None = None,
    error: str | None = None,
) -> str:
    """A server reply with the executions app's field order and compact separators."""
    message = {"method": method, "data": data, "success": success, "channel": channel}
    message["error"] = error
    return json.dumps(message, separators=(",", ":"))


def error_reply(error: str) -> str:
    return reply("error", success=False, error=error)


def decode(text: str | bytes) -> tuple[Any, Any]:
    message = json.loads(text)
    if not isinstance(message, dict):
        raise ValueError("not an object")
    return message.get("method"), message.get("data")


async def subscriber(websocket: ServerConnection) -> None:
    mine: set[str] = set()
    try:
        async for text in websocket:
            try:
                method, data = decode(text)
            except ValueError:
                await websocket.send(error_reply("Message is not valid JSON."))
                continue
            if method in ("subscribe", "unsubscribe"):
                graph_id = data.get("graph_id") if isinstance(data, dict) else None
                if not isinstance(graph_id, str) or not graph_id:
                    await websocket.send(error_reply("Subscription data missing"))
                    continue
                if method == "subscribe":
                    subscriptions.setdefault(graph_id, set()).add(websocket)
                    mine.add(graph_id)
                else:
                    leave(graph_id, websocket)
                    mine.discard(graph_id)
                await websocket.send(reply(method, channel=graph_id))
            elif method == "heartbeat":
                await websocket.send(reply("heartbeat", data="pong"))
            else:
                await websocket.send(error_reply("Message type is not processed by the server"))
    except ConnectionClosed:
        pass
    finally:
        for graph_id in mine:
            leave(graph_id, websocket)


def leave(graph_id: str, websocket: ServerConnection) -> None:
    sockets = subscriptions.get(graph_id)
    if sockets is not None:
        sockets.discard(websocket)
        if not sockets:
            del subscriptions[graph_id]


async def publisher(websocket: ServerConnection) -> None:
    try:
        async for text in websocket:
            try:
                method, data = decode(text)
                if method != "publish":
                    raise ValueError("expected method publish")
                items = data if isinstance(data, list) else [data]
                results = [ExecutionResult.model_validate(item) for item in items]
            except (ValueError, ValidationError) as exc:
                await websocket.send(error_reply(f"Invalid publish message: {exc}"))
                continue
            for result in results:
                sockets = subscriptions.get(result.graph_id)
                if sockets:
                    broadcast(sockets, execution_event_frame(result))
            await websocket.send(reply("publish", data={"accepted": len(results)}))
    except ConnectionClosed:
        pass


async def handler(websocket: ServerConnection) -> None:
    path = urlsplit(websocket.request.path).path if websocket.request else ""
    if path == "/ws":
        await subscriber(websocket)
    elif path == "/publish":
        await publisher(websocket)
    else:
        await websocket.close(1008, "unknown path")


async def serve_forever(host: str, port: int) -> None:
    async with serve(handler, host, port, compression=None, max_size=16 * 1024 * 1024) as server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    try:  # the same event loop as uvicorn picks when installed
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    asyncio.run(serve_forever(args.host, args.port), loop_factory=factory)


if __name__ == "__main__":
    main()
