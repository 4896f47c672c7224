"""POST /api/executions: services in other processes publish results over HTTP."""

import json
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.test import AsyncClient, Client

from executions.schemas import ExecutionResult, execution_event_frame
from tests.conftest import make_result, subscribe
from tests.support import http_scope

pytestmark = pytest.mark.django_db(transaction=True)

INGEST_TOKEN = "ingest-token-for-the-test-suite-0123456789"


@pytest.fixture(autouse=True)
def ingest_token(settings: Any) -> str:
    settings.EXECUTIONS_INGEST_TOKEN = INGEST_TOKEN
    return INGEST_TOKEN


def as_json(result: ExecutionResult) -> Any:
    return json.loads(result.model_dump_json())


@dataclass
class Answer:
    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


async def post_through_asgi(data: str, headers: dict[str, str]) -> Answer:
    """POST to the ASGI application itself: the path daphne and uvicorn serve."""
    from project.asgi import application

    scope = http_scope("/api/executions", {"Content-Type": "application/json", **headers})
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": data.encode()})
    start = await communicator.receive_output(timeout=5)
    body = await communicator.receive_output(timeout=5)
    await communicator.wait(timeout=5)
    return Answer(start["status"], body["body"])


@pytest.fixture(params=["asgi", "django"], autouse=True)
def route(request: pytest.FixtureRequest) -> str:
    """Both ways the endpoint is served: the ASGI fast path, and the ninja route behind it."""
    global _route
    _route = str(request.param)
    return _route


_route = "asgi"


async def post(body: Any, token: str | None = INGEST_TOKEN, raw: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else json.dumps(body)
    if _route == "asgi":
        return await post_through_asgi(data, headers)
    return await AsyncClient().post(
        "/api/executions", data=data, content_type="application/json", headers=headers
    )


@pytest.fixture
async def subscriber(connect: Any, alice_token: str) -> Any:
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")
    return client


async def test_one_result_is_accepted_and_delivered_exactly(subscriber: Any) -> None:
    result = make_result()

    response = await post(as_json(result))

    assert response.status_code == 202
    assert response.json() == {"accepted": 1}
    assert await subscriber.receive_from(timeout=5) == execution_event_frame(result)


async def test_a_batch_is_delivered_in_order(subscriber: Any) -> None:
    results = [make_result(node_exec_id=f"node-{i}") for i in range(3)]

    response = await post([as_json(result) for result in results])

    assert response.status_code == 202
    assert response.json() == {"accepted": 3}
    for result in results:
        assert await subscriber.receive_from(timeout=5) == execution_event_frame(result)


async def test_an_offset_and_a_naive_time_are_kept_as_given(subscriber: Any) -> None:
    body = as_json(make_result())
    body["add_time"] = "2024-05-01T12:00:00+02:00"
    body["start_time"] = "2024-05-01T12:00:00"

    assert (await post(body)).status_code == 202

    event = await subscriber.receive_json_from(timeout=5)
    assert event["data"]["add_time"] == "2024-05-01T12:00:00+02:00"
    assert event["data"]["start_time"] == "2024-05-01T12:00:00"


async def test_a_missing_field_is_named_in_a_400(subscriber: Any) -> None:
    body = as_json(make_result())
    del body["status"]

    response = await post(body)

    assert response.status_code == 400
    assert "status" in response.json()["error"]
    assert await subscriber.receive_nothing(timeout=0.2)


async def test_the_optional_times_must_still_be_present(subscriber: Any) -> None:
    body = as_json(make_result())
    del body["queue_time"]

    response = await post(body)

    assert response.status_code == 400
    assert "queue_time" in response.json()["error"]


async def test_one_bad_item_rejects_the_whole_batch(subscriber: Any) -> None:
    good = as_json(make_result())
    bad = {**good, "status": "EXPLODED"}

    response = await post([good, bad, good])

    assert response.status_code == 400
    assert response.json()["error"].startswith("Invalid request body: 1.status: ")
    assert await subscriber.receive_nothing(timeout=0.3)


@pytest.mark.parametrize("layout", ["{}", " \n\t{}\n", "[{}]", "\r\n [ {} ]\n"])
async def test_one_item_or_a_list_whatever_the_whitespace_around_it(
    subscriber: Any, layout: str
) -> None:
    result = json.dumps(as_json(make_result()))

    response = await post(None, raw=layout.replace("{}", result))

    assert response.status_code == 202
    event = await subscriber.receive_json_from(timeout=5)
    assert event["data"]["graph_id"] == "test_graph"


@pytest.mark.parametrize("raw", ["not json", "42", '"text"', "null"])
async def test_a_body_that_is_no_result_is_a_400(raw: str) -> None:
    response = await post(None, raw=raw)
    assert response.status_code == 400
    assert "error" in response.json()


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
async def test_a_missing_or_wrong_token_is_a_401(subscriber: Any, token: str | None) -> None:
    response = await post(as_json(make_result()), token=token)

    assert response.status_code == 401
    assert "error" in response.json()
    assert await subscriber.receive_nothing(timeout=0.2)


async def test_another_scheme_is_a_401() -> None:
    response = await AsyncClient().post(
        "/api/executions",
        data=json.dumps(as_json(make_result())),
        content_type="application/json",
        headers={"Authorization": f"Basic {INGEST_TOKEN}"},
    )
    assert response.status_code == 401


async def test_without_a_configured_token_ingest_says_how_to_enable_it(settings: Any) -> None:
    settings.EXECUTIONS_INGEST_TOKEN = ""

    response = await post(as_json(make_result()), token="anything")

    assert response.status_code == 403
    assert "EXECUTIONS_INGEST_TOKEN" in response.json()["error"]


def test_the_openapi_schema_describes_the_api(settings: Any) -> None:
    settings.EXECUTIONS_API_DOCS = True  # off by default with DEBUG off, as in the tests

    schema = Client().get("/api/openapi.json").json()

    assert "/api/executions" in schema["paths"]
    assert "/api/ws-token" in schema["paths"]
    assert "ExecutionResult" in json.dumps(schema["components"])


@pytest.mark.parametrize("field", ["graph_id", "graph_exec_id", "node_id"])
async def test_ids_no_database_can_store_are_a_400(subscriber: Any, field: str) -> None:
    body = {**as_json(make_result()), field: "test_graph\u0000"}

    response = await post(body)

    assert response.status_code == 400
    assert response.json()["error"].startswith(f"Invalid request body: {field}: ")


async def test_a_body_over_the_ingest_limit_is_a_413_and_publishes_nothing(
    subscriber: Any, settings: Any
) -> None:
    settings.EXECUTIONS_MAX_INGEST_BYTES = 2_000
    batch = [as_json(make_result(node_exec_id=f"node-{i}")) for i in range(10)]
    assert len(json.dumps(batch)) > 2_000

    response = await post(batch)

    assert response.status_code == 413
    assert response.json() == {"error": "Request body too large: the limit here is 2000 bytes."}
    assert await subscriber.receive_nothing(timeout=0.3)
