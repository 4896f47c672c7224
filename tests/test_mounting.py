"""The app mounted where the host site wants it: every URL, the WebSocket and the ingest follow.

The URLconfs are in tests/urlconfs/; the application is the one ``executions.asgi`` builds.
"""

import json
import re
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client

from executions.schemas import execution_event_frame
from tests.conftest import browser_headers, make_result
from tests.support import http_scope
from tests.test_ingest_api import Answer

pytestmark = pytest.mark.django_db(transaction=True)

INGEST_TOKEN = "ingest-token-for-the-mounting-tests-0123456789"


@pytest.fixture
def live_site(settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.urlconfs.live"
    settings.EXECUTIONS_INGEST_TOKEN = INGEST_TOKEN
    settings.EXECUTIONS_API_DOCS = True  # their links follow the prefix too


@pytest.fixture
def api_only_site(settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.urlconfs.api_only"
    settings.EXECUTIONS_INGEST_TOKEN = INGEST_TOKEN


async def post_to(application: Any, path: str, body: Any) -> Answer:
    """POST JSON with the ingest token straight to the ASGI application."""
    from asgiref.testing import ApplicationCommunicator

    scope = http_scope(
        path,
        {"Content-Type": "application/json", "Authorization": f"Bearer {INGEST_TOKEN}"},
    )
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": json.dumps(body).encode()})
    start = await communicator.receive_output(timeout=5)
    content = await communicator.receive_output(timeout=5)
    await communicator.wait(timeout=5)
    return Answer(start["status"], content["body"])


def test_the_dashboard_links_everything_under_its_prefix(live_site: None, alice: Any) -> None:
    client = Client()
    client.force_login(alice)

    html = client.get("/live/").content.decode()

    assert 'data-ws-path="/live/ws"' in html
    assert 'data-execution-events-url="/live/api/executions/GRAPH_EXEC_ID/events"' in html
    assert "ws://testserver/live/ws" in html
    assert 'href="/live/api/docs"' in html
    assert "POST /live/api/executions" in html
    assert 'action="/live/logout/"' in html
    script, stylesheet = (
        re.search(r'src="([^"]+dashboard\.js[^"]*)"', html),
        re.search(r'href="([^"]+dashboard\.css[^"]*)"', html),
    )
    assert script is not None
    assert stylesheet is not None
    assert script[1].startswith("/live/dashboard/assets/")
    assert stylesheet[1].startswith("/live/dashboard/assets/")
    assert client.get(script[1]).status_code == 200


def test_login_and_logout_come_back_to_the_mounted_dashboard(live_site: None) -> None:
    anonymous = Client().get("/live/").content.decode()
    assert 'href="/live/login/?next=/live/"' in anonymous

    response = Client().post("/live/logout/")
    assert (response.status_code, response["Location"]) == (302, "/live/")


def test_nothing_is_served_outside_the_prefix(live_site: None) -> None:
    for path in ("/", "/login/", "/api/docs", "/healthz", "/ws", "/live/healthz"):
        assert Client().get(path).status_code == 404, path


def test_the_operations_endpoints_are_their_own_include(live_site: None) -> None:
    assert Client().get("/ops/healthz").json() == {"status": "ok"}
    assert Client().get("/ops/metrics").status_code == 200


def test_plain_http_at_the_websocket_url_is_told_to_upgrade(live_site: None) -> None:
    response = Client().get("/live/ws")
    assert response.status_code == 426
    assert response["Upgrade"] == "websocket"


async def test_the_websocket_follows_the_prefix(
    live_site: None, application: Any, channel_layer: Any, alice_token: str
) -> None:
    communicator = WebsocketCommunicator(
        application, f"/live/ws?token={alice_token}", headers=browser_headers()
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    await communicator.send_json_to({"method": "subscribe", "data": {"graph_id": "test_graph"}})
    assert (await communicator.receive_json_from(timeout=5))["success"] is True

    result = make_result(node_exec_id="mounted")
    body = json.loads(result.model_dump_json())
    answer = await post_to(application, "/live/api/executions", body)

    assert (answer.status_code, answer.json()) == (202, {"accepted": 1})
    assert await communicator.receive_from(timeout=5) == execution_event_frame(result)
    await communicator.disconnect(timeout=5)


async def test_a_websocket_outside_the_mounted_route_is_refused_at_the_handshake(
    live_site: None, application: Any, channel_layer: Any, alice_token: str
) -> None:
    for path in ("/ws", "/live/", "/live/wss", "/elsewhere/ws"):
        communicator = WebsocketCommunicator(
            application, f"{path}?token={alice_token}", headers=browser_headers()
        )
        connected, code = await communicator.connect(timeout=5)
        assert (connected, code) == (False, 1000), path  # a close before accept: 403
        await communicator.wait(timeout=5)


async def test_the_ingest_fast_path_answers_at_the_mounted_route(
    live_site: None, alice: Any, channel_layer: Any
) -> None:
    from executions.ingest import IngestEndpoint

    async def django_must_not_see_it(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError(f"{scope['path']} went past the fast path to Django")

    fast_path_alone = IngestEndpoint(django_must_not_see_it)
    body = json.loads(make_result(node_exec_id="fast").model_dump_json())

    answer = await post_to(fast_path_alone, "/live/api/executions", body)

    assert (answer.status_code, answer.json()) == (202, {"accepted": 1})


async def test_the_api_alone_serves_ingest_and_history_without_a_dashboard(
    api_only_site: None, application: Any, alice: Any, alice_token: str, channel_layer: Any
) -> None:
    body = json.loads(make_result(node_exec_id="api-only").model_dump_json())

    answer = await post_to(application, "/svc/executions", body)

    assert (answer.status_code, answer.json()) == (202, {"accepted": 1})
    client = Client(headers={"Authorization": f"Bearer {alice_token}"})
    page = (await _in_thread(client.get, "/svc/graphs/test_graph/executions?since=0")).json()
    assert [event["result"]["node_exec_id"] for event in page["events"]] == ["api-only"]
    assert (await _in_thread(Client().get, "/")).status_code == 404


async def _in_thread(function: Any, *args: Any) -> Any:
    from asgiref.sync import sync_to_async

    return await sync_to_async(function)(*args)
