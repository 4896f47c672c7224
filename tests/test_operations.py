"""Operating the service: health and readiness for load balancers, Prometheus metrics."""

from typing import Any

import pytest
from django.test import AsyncClient, Client

from executions.checks import check_metrics_allowed
from executions.layers import channel_layer_config
from tests.support import free_port, http_scope

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


# --- who may read /metrics ----------------------------------------------------------------

METRICS_TOKEN = "metrics-token-for-the-test-suite-0123456789"


def metrics_from(address: str, authorization: str | None = None) -> Any:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return Client(REMOTE_ADDR=address).get("/metrics", headers=headers)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_metrics_answer_localhost_by_default(address: str) -> None:
    assert metrics_from(address).status_code == 200


@pytest.mark.parametrize("address", ["203.0.113.7", "10.0.0.1", "2001:db8::1", "", "unknown"])
def test_metrics_refuse_everyone_else_by_default(address: str) -> None:
    response = metrics_from(address)

    assert response.status_code == 403
    assert "EXECUTIONS_METRICS_ALLOWED" in response.json()["error"]
    assert b"executions_connections" not in response.content


def test_metrics_answer_the_listed_networks_only(settings: Any) -> None:
    settings.EXECUTIONS_METRICS_ALLOWED = {"networks": ["10.0.0.0/8", "2001:db8::/32"]}

    assert metrics_from("10.20.30.40").status_code == 200
    assert metrics_from("2001:db8::1").status_code == 200
    assert metrics_from("11.0.0.1").status_code == 403
    assert metrics_from("127.0.0.1").status_code == 403  # the list replaces the default


def test_metrics_answer_the_bearer_token_from_anywhere(settings: Any) -> None:
    settings.EXECUTIONS_METRICS_ALLOWED = {"networks": [], "token": METRICS_TOKEN}

    assert metrics_from("203.0.113.7", f"Bearer {METRICS_TOKEN}").status_code == 200
    assert metrics_from("203.0.113.7", f"bearer {METRICS_TOKEN}").status_code == 200
    for wrong in (
        "Bearer wrong",
        f"Bearer {METRICS_TOKEN}x",
        f"Basic {METRICS_TOKEN}",
        "Bearer ",
        None,
    ):
        assert metrics_from("203.0.113.7", wrong).status_code == 403, wrong
    assert metrics_from("127.0.0.1").status_code == 403


def test_an_empty_token_lets_nobody_in_by_token(settings: Any) -> None:
    settings.EXECUTIONS_METRICS_ALLOWED = {"networks": [], "token": ""}

    assert metrics_from("203.0.113.7", "Bearer ").status_code == 403
    assert metrics_from("127.0.0.1", "Bearer ").status_code == 403


async def test_the_client_address_is_the_one_the_server_reports(application: Any) -> None:
    """Through the ASGI application, as daphne and uvicorn call it: the scope's client."""
    from asgiref.testing import ApplicationCommunicator

    async def status_for(client: str) -> int:
        scope = http_scope("/metrics", {"Host": "localhost"}, method="GET", client=client)
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(timeout=5)
        await communicator.receive_output(timeout=5)
        await communicator.wait(timeout=5)
        return int(start["status"])

    assert await status_for("127.0.0.1") == 200
    assert await status_for("198.51.100.4") == 403


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["127.0.0.1"], "expected a dict"),
        ({"networks": "127.0.0.1"}, "networks must be a list"),
        ({"networks": ["localhost"]}, "'localhost' is not an address"),
        ({"networks": [], "token": 42}, "token must be a string"),
        ({"adresses": []}, "unknown key(s) adresses"),
    ],
)
def test_a_malformed_metrics_setting_is_a_configuration_error(
    settings: Any, value: Any, problem: str
) -> None:
    settings.EXECUTIONS_METRICS_ALLOWED = value

    (error,) = check_metrics_allowed(None)

    assert error.id == "executions.E003"
    assert problem in error.msg


def test_the_default_metrics_setting_passes_the_checks() -> None:
    assert check_metrics_allowed(None) == []


# --- the API docs -------------------------------------------------------------------------

DOCS = ("/api/docs", "/api/openapi.json")


@pytest.mark.parametrize("path", DOCS)
def test_the_api_docs_are_off_by_default_without_debug(settings: Any, path: str) -> None:
    settings.DEBUG = False

    assert Client().get(path).status_code == 404


@pytest.mark.parametrize("path", DOCS)
def test_the_api_docs_are_on_by_default_in_debug_mode(settings: Any, path: str) -> None:
    settings.DEBUG = True

    assert Client().get(path).status_code == 200


@pytest.mark.parametrize("path", DOCS)
def test_the_api_docs_setting_wins_over_debug(settings: Any, path: str) -> None:
    settings.DEBUG, settings.EXECUTIONS_API_DOCS = False, True
    assert Client().get(path).status_code == 200

    settings.DEBUG, settings.EXECUTIONS_API_DOCS = True, False
    assert Client().get(path).status_code == 404


def test_the_dashboard_links_the_api_docs_only_while_they_are_served(settings: Any) -> None:
    settings.EXECUTIONS_API_DOCS = False
    assert "/api/docs" not in Client().get("/").content.decode()

    settings.EXECUTIONS_API_DOCS = True
    assert 'href="/api/docs"' in Client().get("/").content.decode()
