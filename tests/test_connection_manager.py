"""AutoGPT's ConnectionManager scenarios, on the real ASGI app and real channel layers."""

from typing import Any

import pytest
from channels.layers import get_channel_layer

from executions.events import send_execution_result
from executions.groups import graph_group_name
from executions.schemas import Methods, WsMessage
from tests.conftest import subscribe
from tests.support import group_members

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["memory", "redis-pubsub", "redis-core"])
def layer_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_connect(connect: Any, alice_token: str) -> None:
    client = await connect(token=alice_token)

    await client.send_json_to({"method": "heartbeat", "data": "ping"})
    assert await client.receive_from(timeout=5) == (
        '{"method":"heartbeat","data":"pong","success":true,"channel":null,"error":null}'
    )


async def test_disconnect(connect: Any, alice_token: str, channel_layer: Any) -> None:
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")
    await subscribe(client, "graph-2")
    assert await group_members(channel_layer) != {}

    await client.disconnect()

    assert await group_members(channel_layer) == {}


async def test_subscribe(connect: Any, alice_token: str, channel_layer: Any) -> None:
    client = await connect(token=alice_token)

    await client.send_json_to({"method": "subscribe", "data": {"graph_id": "test_graph"}})

    assert await client.receive_from(timeout=5) == (
        '{"method":"subscribe","data":null,"success":true,"channel":"test_graph","error":null}'
    )
    members = await group_members(channel_layer)
    assert any(graph_group_name("test_graph") in group for group in members)


async def test_unsubscribe(connect: Any, alice_token: str, channel_layer: Any) -> None:
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")

    await client.send_json_to({"method": "unsubscribe", "data": {"graph_id": "test_graph"}})

    assert await client.receive_from(timeout=5) == (
        '{"method":"unsubscribe","data":null,"success":true,"channel":"test_graph","error":null}'
    )
    assert await group_members(channel_layer, graphs_only=True) == {}


async def test_send_execution_result(connect: Any, alice_token: str, result_factory: Any) -> None:
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")
    result = result_factory()

    await send_execution_result(result)

    expected = WsMessage(
        method=Methods.EXECUTION_EVENT, channel="test_graph", data=result.model_dump()
    ).model_dump_json()
    assert await client.receive_from(timeout=5) == expected


async def test_send_execution_result_no_subscribers(
    connect: Any, alice_token: str, result_factory: Any
) -> None:
    bystander = await connect(token=alice_token)
    result = result_factory(aware=False)

    await send_execution_result(result)

    assert await bystander.receive_nothing(timeout=0.3)
    assert await group_members(get_channel_layer(), graphs_only=True) == {}
