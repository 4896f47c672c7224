"""Operating the service: health and readiness for load balancers, Prometheus metrics."""

from typing import Any

import pytest
from django.test import AsyncClient, Client

from executions.layers import channel_layer_config
from tests.support import free_port

pytestmark = pytest.mark.django_db(transaction=True)


async def test_healthz_answers_while_the_process_runs() -> None:
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_the_database_and_the_layer(channel_layer: Any) -> None:
    response = await AsyncClient().get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}


async def test_readyz_is_unavailable_while_redis_is_down(settings: Any) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings.CHANNEL_LAYERS = {"default": channel_layer_config(dead_redis, "pubsub")}

    response = await AsyncClient().get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "database": "ok",
        "channel_layer": "unavailable",
    }


def test_metrics_are_exposed_for_prometheus() -> None:
    response = Client().get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    for name in [
        "executions_connections",
        "executions_subscriptions",
        "executions_events_published_total",
        "executions_frames_delivered_total",
        "executions_error_frames_total",
        "executions_slow_consumer_disconnects_total",
        "executions_layer_failures_total",
        "executions_publish_to_send_seconds_bucket",
    ]:
        assert name in body
