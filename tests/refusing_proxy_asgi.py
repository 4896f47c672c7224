"""The demo project's application behind a stand-in for a proxy that blocks WebSocket upgrades.

daphne serves it in tests/test_dashboard_fallback_browser.py: while the file named by
``EXECUTIONS_TEST_REFUSE_WEBSOCKETS`` exists, every WebSocket handshake is refused before the
application sees it (daphne answers 403, so a browser's WebSocket never opens); plain HTTP, the
Server-Sent Events stream included, goes through. Deleting the file lets handshakes through
again, as when the proxy is fixed.
"""

import asyncio
import os
from pathlib import Path
from typing import Any

from project.asgi import application as site_application

REFUSE_WHILE = Path(os.environ["EXECUTIONS_TEST_REFUSE_WEBSOCKETS"])


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket" and await asyncio.to_thread(REFUSE_WHILE.exists):
        await receive()  # websocket.connect
        await send({"type": "websocket.close"})  # before accepting: the handshake fails
        return
    await site_application(scope, receive, send)
