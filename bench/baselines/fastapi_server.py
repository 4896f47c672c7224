"""Baseline: FastAPI + uvicorn with AutoGPT's plain in-process ConnectionManager.

Written by us after AutoGPT's ``backend/server/conn_manager.py``: a dict graph_id -> set of
WebSockets in one process; each event is serialized once (the same frame text as
``executions.schemas.execution_event_frame``) and ``send_text`` is awaited on each subscriber in
turn. The same wire protocol as the executions app (subscribe / unsubscribe / heartbeat and
their replies), no authentication: ``POST /api/executions`` takes one ExecutionResult or an
array and ignores any Bearer token.

    python bench/baselines/fastapi_server.py --port 8001
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402
from fastapi import FastAPI, WebSocket, WebSocketDisconnect  # noqa: E402

from executions.schemas import ExecutionResult, execution_event_frame  # noqa: E402


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


class ConnectionManager:
    """AutoGPT's pattern: subscriptions in a dict, one awaited send per subscriber."""

    def __init__(self) -> None:
        self.active_connections: set[WebSocket] = set()
        self.subscriptions: dict[str, set[WebSocket]] = {}

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections.add(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        self.active_connections.discard(websocket)
        for graph_id in [g for g, sockets in self.subscriptions.items() if websocket in sockets]:
            sockets = self.subscriptions[graph_id]
            sockets.discard(websocket)
            if not sockets:
                del self.subscriptions[graph_id]

    async def subscribe(self, graph_id: str, websocket: WebSocket) -> None:
        self.subscriptions.setdefault(graph_id, set()).add(websocket)

    async def unsubscribe(self, graph_id: str, websocket: WebSocket) -> None:
        sockets = self.subscriptions.get(graph_id)
        if sockets is not None:
            sockets.discard(websocket)
            if not sockets:
                del self.subscriptions[graph_id]

    async def send_execution_result(self, result: ExecutionResult) -> None:
        graph_id = result.graph_id
        if graph_id in self.subscriptions:
            message = execution_event_frame(result)
            # A copy: a subscriber may disconnect while we await another's send. AutoGPT lets
            # a failed send propagate; here it drops that subscriber and goes on.
            for connection in list(self.subscriptions[graph_id]):
                try:
                    await connection.send_text(message)
                except Exception:
                    self.disconnect(connection)


manager = ConnectionManager()
app = FastAPI(title="Baseline: in-process connection manager")


@app.websocket("/ws")
async def websocket_router(websocket: WebSocket) -> None:
    await manager.connect(websocket)
    try:
        while True:
            text = await websocket.receive_text()
            try:
                message = json.loads(text)
                method = message.get("method")
                data = message.get("data")
            except (ValueError, AttributeError):
                await websocket.send_text(reply("error", success=False, error="Invalid JSON"))
                continue
            if method in ("subscribe", "unsubscribe"):
                graph_id = data.get("graph_id") if isinstance(data, dict) else None
                if not isinstance(graph_id, str) or not graph_id:
                    error = "Subscription data missing"
                    await websocket.send_text(reply("error", success=False, error=error))
                    continue
                if method == "subscribe":
                    await manager.subscribe(graph_id, websocket)
                else:
                    await manager.unsubscribe(graph_id, websocket)
                await websocket.send_text(reply(method, channel=graph_id))
            elif method == "heartbeat":
                await websocket.send_text(reply("heartbeat", data="pong"))
            else:
                error = "Message type is not processed by the server"
                await websocket.send_text(reply("error", success=False, error=error))
    except WebSocketDisconnect:
        pass
    finally:
        manager.disconnect(websocket)


@app.post("/api/executions", status_code=202)
async def ingest_executions(payload: ExecutionResult | list[ExecutionResult]) -> dict[str, int]:
    results = payload if isinstance(payload, list) else [payload]
    for result in results:
        await manager.send_execution_result(result)
    return {"accepted": len(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # uvicorn's defaults otherwise (uvloop, httptools, websockets-sansio when installed),
    # without the access log, as every server of the benchmark runs.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
