"""Health endpoints for load balancers: /healthz (the process answers), /readyz (it can serve)."""

import asyncio
import logging
from collections.abc import Awaitable

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)

READINESS_TIMEOUT = 2.0
_PROBE_GROUP = "executions.readiness-probe"


async def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and its event loop answers."""
    return JsonResponse({"status": "ok"})


async def readyz(request: HttpRequest) -> JsonResponse:
    """The database and the channel layer both answer within a bounded time."""
    checks = {
        "database": await _answers(sync_to_async(_query_database)()),
        "channel_layer": await _answers(_send_to_layer()),
    }
    ready = all(checks.values())
    body = {"status": "ok" if ready else "unavailable", **{k: _word(v) for k, v in checks.items()}}
    return JsonResponse(body, status=200 if ready else 503)


def _query_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _send_to_layer() -> None:
    # A send to a group nobody joins: it reaches the broker without reaching anyone.
    await get_channel_layer().group_send(_PROBE_GROUP, {"type": "readiness.probe"})


async def _answers(probe: Awaitable[None]) -> bool:
    try:
        await asyncio.wait_for(probe, READINESS_TIMEOUT)
    except Exception:
        logger.warning("readiness check failed", exc_info=True)
        return False
    return True


def _word(ok: bool) -> str:
    return "ok" if ok else "unavailable"
