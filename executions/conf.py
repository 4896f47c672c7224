"""The app's settings: every EXECUTIONS_* name, its default, read lazily from django.conf."""

from collections.abc import Callable
from functools import cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    # Largest inbound WebSocket message, in bytes; a larger one closes the connection.
    "EXECUTIONS_MAX_MESSAGE_BYTES": 64 * 1024,
    # Under daphne: seconds between protocol pings, and how long a socket may leave one unanswered.
    "EXECUTIONS_PING_INTERVAL": 20,
    "EXECUTIONS_PING_TIMEOUT": 30,
    # False: connections use the plain ASGI send under every server (executions.servers).
    "EXECUTIONS_SERVER_ADAPTERS": True,
    # Dotted path to a callable (user, graph_id) -> bool deciding who may subscribe.
    "EXECUTIONS_SUBSCRIBE_POLICY": "executions.policy.owner_may_subscribe",
    # Shared secret for POST /api/executions; empty refuses every ingest request.
    "EXECUTIONS_INGEST_TOKEN": "",
    # Largest body of POST /api/executions, in bytes; a larger one is a 413, never read.
    "EXECUTIONS_MAX_INGEST_BYTES": 1024 * 1024,
    # Largest multipart/form-data body (file uploads) elsewhere, in bytes; None: no limit.
    # Other bodies are bounded by Django's DATA_UPLOAD_MAX_MEMORY_SIZE.
    "EXECUTIONS_MAX_UPLOAD_BYTES": 10 * 1024 * 1024,
    # Lifetime of WebSocket tokens minted without an explicit TTL, in seconds.
    "EXECUTIONS_TOKEN_TTL": 3600,
    # Browser origins allowed on the WebSocket besides the request's own, each a full
    # "scheme://host[:port]" compared exactly (no wildcards; see executions.origins).
    "EXECUTIONS_ALLOWED_ORIGINS": [],
    # How many group_add / group_discard calls one process runs at once; bounds the Redis
    # connections a burst of connects or disconnects takes from the pool.
    "EXECUTIONS_MEMBERSHIP_CONCURRENCY": 32,
    # Limits: each crossing gets an error frame or a close with a named code (see protocol.py).
    "EXECUTIONS_MAX_SUBSCRIPTIONS_PER_CONNECTION": 100,
    "EXECUTIONS_MESSAGES_PER_SECOND": 20,
    "EXECUTIONS_MESSAGE_BURST": 40,
    "EXECUTIONS_MAX_CONNECTIONS_PER_USER": 100,
    "EXECUTIONS_MAX_CONNECTIONS": 10_000,
    # Frames waiting for one connection, in bytes; past it the client is closed with 4008.
    "EXECUTIONS_MAX_BACKLOG_BYTES": 4 * 1024 * 1024,
    # Server-Sent Events (<api>/graphs/<id>/events): seconds between ": heartbeat" comments.
    "EXECUTIONS_SSE_HEARTBEAT_SECONDS": 15.0,
    # How often each process checks the history for events the channel layer lost.
    "EXECUTIONS_SWEEP_SECONDS": 2.0,
    # Consecutive events of one graph sent as one channel-layer message ("execution.results"),
    # at most this many; 1: one "execution.result" per event, as processes before it expect.
    "EXECUTIONS_LAYER_BATCH_EVENTS": 100,
    # Retention: the last N events of each graph, and none older than D days (None: no limit).
    "EXECUTIONS_HISTORY_MAX_EVENTS": 10_000,
    "EXECUTIONS_HISTORY_MAX_AGE_DAYS": 30,
    # Who may read /metrics: client addresses or CIDR networks, and/or a bearer token
    # (executions.access). Everyone else gets 403.
    "EXECUTIONS_METRICS_ALLOWED": {"networks": ["127.0.0.0/8", "::1"], "token": ""},
    # Serve the API docs and OpenAPI schema (<api>/docs, <api>/openapi.json); None: when DEBUG.
    "EXECUTIONS_API_DOCS": None,
    # Serve the dashboard's "Run demo graph" (POST demo/run) with DEBUG off too.
    "EXECUTIONS_DEMO_ENABLED": False,
}


def get(name: str) -> Any:
    """Return the project's value of an EXECUTIONS_* setting, or its default."""
    return getattr(settings, name, DEFAULTS[name])


def api_docs_enabled() -> bool:
    """EXECUTIONS_API_DOCS, or DEBUG when it is None."""
    enabled = get("EXECUTIONS_API_DOCS")
    return bool(settings.DEBUG if enabled is None else enabled)


def demo_enabled() -> bool:
    """The demo runner's button and endpoint: with DEBUG, or EXECUTIONS_DEMO_ENABLED."""
    return bool(settings.DEBUG or get("EXECUTIONS_DEMO_ENABLED"))


@cache
def subscribe_policy() -> Callable[[Any, str], bool]:
    """Return the configured subscribe policy callable."""
    return import_string(get("EXECUTIONS_SUBSCRIBE_POLICY"))


@receiver(setting_changed)
def _forget_cached_policy(*, setting: str, **kwargs: Any) -> None:
    if setting == "EXECUTIONS_SUBSCRIBE_POLICY":
        subscribe_policy.cache_clear()
