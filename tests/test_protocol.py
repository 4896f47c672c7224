"""The wire protocol: replies to every message, and an error frame for anything unusable."""

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from executions.events import send_execution_result
from executions.protocol import MAX_CLOSE_REASON_BYTES, ErrorText, close_reason
from tests.conftest import subscribe

pytestmark = pytest.mark.django_db(transaction=True)


def error(text: str, channel: str | None = None) -> str:
    return json.dumps(
        {"method": "error", "data": None, "success": False, "channel": channel, "error": text},
        separators=(",", ":"),
        ensure_ascii=False,
    )


async def assert_still_serving(client: Any) -> None:
    await client.send_json_to({"method": "heartbeat", "data": "ping"})
    reply = await client.receive_json_from(timeout=5)
    assert reply["data"] == "pong"


INVALID_GRAPH_ID = error(ErrorText.INVALID_GRAPH_ID)
UNKNOWN_METHOD = error("Unknown method; expected one of: subscribe, unsubscribe, heartbeat.")
BAD_DATA = error("data must be an object, an array, a string or null.")


@pytest.fixture
async def client(connect: Any, alice_token: str) -> Any:
    return await connect(token=alice_token)


async def test_heartbeat_is_answered_with_pong(client: Any) -> None:
    await client.send_to(text_data='{"method":"heartbeat","data":"ping"}')
    assert await client.receive_from(timeout=5) == (
        '{"method":"heartbeat","data":"pong","success":true,"channel":null,"error":null}'
    )


async def test_subscribing_twice_is_acknowledged_and_delivers_once(
    client: Any, result_factory: Any
) -> None:
    first = await subscribe(client, "test_graph")
    second = await subscribe(client, "test_graph")
    assert (
        first
        == second
        == {
            "method": "subscribe",
            "data": None,
            "success": True,
            "channel": "test_graph",
            "error": None,
        }
    )

    await send_execution_result(result_factory())

    await client.receive_from(timeout=5)
    assert await client.receive_nothing(timeout=0.2)


async def test_unsubscribing_from_a_graph_not_subscribed_is_acknowledged(client: Any) -> None:
    await client.send_json_to({"method": "unsubscribe", "data": {"graph_id": "test_graph"}})
    assert await client.receive_from(timeout=5) == (
        '{"method":"unsubscribe","data":null,"success":true,"channel":"test_graph","error":null}'
    )


async def test_unsubscribed_connection_stops_receiving(client: Any, result_factory: Any) -> None:
    await subscribe(client, "test_graph")
    await client.send_json_to({"method": "unsubscribe", "data": {"graph_id": "test_graph"}})
    await client.receive_from(timeout=5)

    await send_execution_result(result_factory())

    assert await client.receive_nothing(timeout=0.3)


async def test_events_reach_only_subscribers_of_their_graph(
    client: Any, result_factory: Any
) -> None:
    await subscribe(client, "graph-2")

    await send_execution_result(result_factory(graph_id="test_graph"))

    assert await client.receive_nothing(timeout=0.3)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("not json", error("Message is not valid JSON.")),
        ("[1,2]", error("Message must be a JSON object.")),
        ('"subscribe"', error("Message must be a JSON object.")),
        ("null", error("Message must be a JSON object.")),
        ("[" * 100_00 + "]" * 100_00, error("Message is not valid JSON.")),
        ('{"n":' + "9" * 5000 + "}", error("Message is not valid JSON.")),
        ("{}", UNKNOWN_METHOD),
        (
            '{"method":"dance"}',
            UNKNOWN_METHOD,
        ),
        (
            '{"method":5}',
            UNKNOWN_METHOD,
        ),
        ('{"method":"subscribe"}', error("Subscription data missing")),
        ('{"method":"subscribe","data":null}', error("Subscription data missing")),
        ('{"method":"subscribe","data":{}}', error("Subscription data missing")),
        ('{"method":"subscribe","data":""}', error("Subscription data missing")),
        ('{"method":"subscribe","data":"test_graph"}', error("Subscription data missing")),
        ('{"method":"unsubscribe","data":{}}', error("Subscription data missing")),
        (
            '{"method":"subscribe","data":7}',
            BAD_DATA,
        ),
        (
            '{"method":"subscribe","data":{"graph_id":""}}',
            INVALID_GRAPH_ID,
        ),
        (
            '{"method":"subscribe","data":{"graph_id":42}}',
            INVALID_GRAPH_ID,
        ),
        (
            '{"method":"subscribe","data":{"graph_id":null}}',
            INVALID_GRAPH_ID,
        ),
        (
            '{"method":"subscribe","data":{"graph_id":["a"]}}',
            INVALID_GRAPH_ID,
        ),
        (
            json.dumps({"method": "subscribe", "data": {"graph_id": "x" * 256}}),
            INVALID_GRAPH_ID,
        ),
        (
            '{"method":"execution_event","data":{"graph_id":"test_graph"}}',
            error("Message type is not processed by the server"),
        ),
        ('{"method":"error"}', error("Message type is not processed by the server")),
    ],
)
async def test_unusable_frames_get_an_error_frame_and_the_connection_stays(
    client: Any, frame: str, expected: str
) -> None:
    await client.send_to(text_data=frame)

    assert await client.receive_from(timeout=5) == expected
    await assert_still_serving(client)


async def test_an_empty_text_frame_gets_an_error_frame(client: Any) -> None:
    await client.send_input({"type": "websocket.receive", "text": ""})

    assert await client.receive_from(timeout=5) == error("Message is not valid JSON.")
    await assert_still_serving(client)


async def test_binary_frames_get_an_error_frame(client: Any) -> None:
    await client.send_to(bytes_data=b'{"method":"heartbeat"}')

    assert await client.receive_from(timeout=5) == error(
        "Binary frames are not supported; send JSON text frames."
    )
    await assert_still_serving(client)


async def test_subscribing_to_someone_elses_graph_is_refused_without_saying_it_exists(
    client: Any, make_user: Any
) -> None:
    await sync_to_async(make_user)("bob", graphs=("bobs-graph",))

    await client.send_json_to({"method": "subscribe", "data": {"graph_id": "bobs-graph"}})
    refused_existing = await client.receive_from(timeout=5)
    await client.send_json_to({"method": "subscribe", "data": {"graph_id": "no-such-graph"}})
    refused_missing = await client.receive_from(timeout=5)

    assert refused_existing == error("Not allowed to subscribe to this graph.", "bobs-graph")
    assert refused_missing == error("Not allowed to subscribe to this graph.", "no-such-graph")
    await assert_still_serving(client)


async def test_a_refused_subscription_receives_nothing(
    client: Any, make_user: Any, result_factory: Any
) -> None:
    await sync_to_async(make_user)("bob", graphs=("bobs-graph",))
    await subscribe(client, "bobs-graph")

    await send_execution_result(result_factory(graph_id="bobs-graph"))

    assert await client.receive_nothing(timeout=0.3)


@pytest.mark.parametrize(
    "graph_id", ["with space", "a/b|c#d", "ünïcødé 图", "x" * 255, "graph.h.abc", "-"]
)
async def test_any_graph_id_up_to_255_characters_works(
    connect: Any, make_user: Any, result_factory: Any, graph_id: str
) -> None:
    from executions.tokens import mint_token

    user = await sync_to_async(make_user)("carol", graphs=(graph_id,))
    client = await connect(token=await sync_to_async(lambda: mint_token(user).token)())
    reply = await subscribe(client, graph_id)
    assert reply["success"] is True
    assert reply["channel"] == graph_id

    result = result_factory(graph_id=graph_id)
    await send_execution_result(result)

    event = await client.receive_json_from(timeout=5)
    assert event["channel"] == graph_id
    assert event["data"]["graph_id"] == graph_id


async def test_a_message_over_64_kib_closes_the_connection_with_4009(client: Any) -> None:
    await client.send_to(text_data=json.dumps({"method": "heartbeat", "data": "x" * 65_536}))

    assert await client.receive_from(timeout=5) == error(
        "Message too big: the limit is 65536 bytes."
    )
    closed = await client.receive_output(timeout=5)
    assert closed["type"] == "websocket.close"
    assert closed["code"] == 4009
    assert "65536 bytes" in closed["reason"]


async def test_a_message_just_under_the_limit_is_processed(client: Any) -> None:
    frame = json.dumps({"method": "heartbeat", "data": "x" * 65_000})
    assert len(frame.encode()) <= 65_536

    await client.send_to(text_data=frame)

    assert (await client.receive_json_from(timeout=5))["data"] == "pong"


async def test_the_limit_counts_utf8_bytes_not_characters(client: Any) -> None:
    frame = json.dumps({"method": "heartbeat", "data": "é" * 40_000}, ensure_ascii=False)
    assert len(frame) < 65_536 < len(frame.encode())

    await client.send_to(text_data=frame)

    await client.receive_from(timeout=5)
    closed = await client.receive_output(timeout=5)
    assert closed["code"] == 4009


# --- close reasons ------------------------------------------------------------------------


def test_a_close_reason_is_cut_to_what_a_close_frame_carries() -> None:
    reason = close_reason(ErrorText.SLOW_CONSUMER)

    assert len(ErrorText.SLOW_CONSUMER.encode()) > MAX_CLOSE_REASON_BYTES
    assert len(reason.encode()) <= MAX_CLOSE_REASON_BYTES
    assert ErrorText.SLOW_CONSUMER.startswith(reason)


def test_a_close_reason_is_cut_between_characters() -> None:
    reason = close_reason("é" * 100)  # 200 bytes, 2 per character

    assert reason == "é" * 61  # 122 bytes: half a character is never sent


def test_a_short_close_reason_is_kept_whole() -> None:
    assert close_reason(ErrorText.SERVER_FULL) == ErrorText.SERVER_FULL
