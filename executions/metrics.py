"""Prometheus metrics of this process, served at /metrics."""

import time
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from executions.access import metrics_allowed

METRICS_REFUSED = (
    "Metrics are served only to the client addresses and the bearer token that "
    "EXECUTIONS_METRICS_ALLOWED lists (localhost by default)."
)

CONNECTIONS = Gauge("executions_connections", "Open, authenticated WebSocket connections.")
SUBSCRIPTIONS = Gauge("executions_subscriptions", "Graph subscriptions of open connections.")
EVENTS_PUBLISHED = Counter(
    "executions_events_published", "Execution results stored and sent to the channel layer."
)
FRAMES_DELIVERED = Counter(
    "executions_frames_delivered", "Event frames handed to WebSocket connections."
)
ERROR_FRAMES = Counter(
    "executions_error_frames", "Error frames sent to clients, by kind.", ["kind"]
)
AUTH_FAILURES = Counter(
    "executions_auth_failures", "Connections refused for authentication, by reason.", ["reason"]
)
CONNECTIONS_REVOKED = Counter(
    "executions_connections_revoked",
    "Open connections closed because their authentication ended, by reason.",
    ["reason"],
)
EVENTS_RECOVERED = Counter(
    "executions_events_recovered",
    "Events the channel layer never brought, handed out from the history by the sweep.",
)
SLOW_CONSUMER_DISCONNECTS = Counter(
    "executions_slow_consumer_disconnects", "Connections closed for falling behind the stream."
)
LAYER_FAILURES = Counter(
    "executions_layer_failures",
    "Channel-layer operations that failed, by operation.",
    ["operation"],
)
BATCHES_STORED = Counter(
    "executions_batches_stored",
    "Transactions of the writer thread (group commit), each storing the publishes that waited.",
)
BATCHES_FAILED = Counter(
    "executions_batches_failed", "Writer transactions that failed, failing every publish in them."
)
BATCH_EVENTS = Histogram(
    "executions_batch_events",
    "Events stored per writer transaction.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
PUBLISH_TO_SEND_SECONDS = Histogram(
    "executions_publish_to_send_seconds",
    "Time from a result's publication to its frames being handed to connections: once per "
    "event for those that take it at once, once per frame for those that send it later.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def observe_publish_to_send(event: dict[str, Any]) -> None:
    """Observe how long ago a layer event (fanout.layer_event) was published, if it says."""
    published_at = event.get("published_at")
    if published_at is not None:
        PUBLISH_TO_SEND_SECONDS.observe(time.time() - published_at)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Expose this process's metrics in Prometheus' text format, to whom
    EXECUTIONS_METRICS_ALLOWED lets in (executions.access); 403 for anyone else."""
    if not metrics_allowed(request):
        return JsonResponse({"error": METRICS_REFUSED}, status=403)
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
