"""Delivery under bursts and storms: whole, in order, and nothing left behind."""

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from executions.events import send_execution_result, send_execution_results
from executions.groups import graph_group_name
from executions.tokens import mint_token
from tests.conftest import browser_headers, make_result, subscribe
from tests.support import group_members

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["memory", "redis-pubsub", "redis-core"])
def layer_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def receive_sequence(client: WebsocketCommunicator, count: int) -> list[str]:
    received = []
    for _ in range(count):
        event = await client.receive_json_from(timeout=10)
        received.append(event["data"]["node_exec_id"])
    return received


@pytest.mark.parametrize(("subscribers", "events"), [(10, 1000), (100, 500)])
async def test_a_burst_reaches_every_subscriber_whole_and_in_order(
    connect: Any, alice_token: str, subscribers: int, events: int
) -> None:
    clients = [await connect(token=alice_token) for _ in range(subscribers)]
    for client in clients:
        await subscribe(client, "test_graph")
    template = make_result()

    for number in range(events):
        await send_execution_result(template.model_copy(update={"node_exec_id": str(number)}))

    expected = [str(number) for number in range(events)]
    received = await asyncio.gather(*(receive_sequence(client, events) for client in clients))
    assert all(sequence == expected for sequence in received)
    assert all([await client.receive_nothing(timeout=0.05) for client in clients])


async def test_a_storm_of_connections_leaves_no_member_behind(
    application: Any, alice_token: str, channel_layer: Any, settings: Any
) -> None:
    """1,000 clients connect, subscribe and leave at once; every group ends empty."""
    storm = 1000
    settings.EXECUTIONS_MAX_CONNECTIONS_PER_USER = storm  # one user's token opens them all

    async def visit() -> None:
        client = WebsocketCommunicator(
            application, f"/ws?token={alice_token}", headers=browser_headers()
        )
        connected, _ = await client.connect(timeout=30)
        assert connected
        # A thousand subscribes check the database one after another (one thread for it): the
        # last reply may wait as long as the last handshake.
        reply = await subscribe(client, "test_graph", reply_within=30)
        assert reply["success"] is True
        await client.disconnect(timeout=30)

    await asyncio.wait_for(asyncio.gather(*(visit() for _ in range(storm))), timeout=120)

    assert await group_members(channel_layer) == {}


@pytest.mark.parametrize("expiring_layer", ["memory", "redis-core"])
async def test_memberships_are_refreshed_before_they_expire(
    settings: Any, application: Any, alice: Any, expiring_layer: str
) -> None:
    """A layer that forgets members after group_expiry still delivers to a long subscription.

    (The pub/sub layer keeps memberships in the process, without expiry.)
    """
    from channels.layers import get_channel_layer

    from tests.conftest import layer_settings

    config = layer_settings(expiring_layer)
    config["CONFIG"]["group_expiry"] = 2
    settings.CHANNEL_LAYERS = {"default": config}
    token = await sync_to_async(lambda: mint_token(alice).token)()
    client = WebsocketCommunicator(application, f"/ws?token={token}", headers=browser_headers())
    await client.connect(timeout=5)
    try:
        await subscribe(client, "test_graph")
        await asyncio.sleep(3.5)  # well past the expiry: only a refresh keeps the member

        await send_execution_result(make_result())

        event = await client.receive_json_from(timeout=5)
        assert event["channel"] == "test_graph"
    finally:
        await client.disconnect()
        await get_channel_layer().flush()


async def test_anyone_else_in_a_graphs_group_still_gets_its_events_through_the_layer(
    connect: Any, alice_token: str, channel_layer: Any
) -> None:
    """Subscribers of the publishing process get events directly; other members of the group,
    such as a consumer of the project's own joined with group_add, through the layer as ever."""
    client = await connect(token=alice_token)
    await subscribe(client, "test_graph")
    other = await channel_layer.new_channel()
    await channel_layer.group_add(graph_group_name("test_graph"), other)

    seq = await send_execution_result(make_result(node_exec_id="for-everyone"))

    message = await asyncio.wait_for(channel_layer.receive(other), timeout=10)
    assert (message["type"], message["graph_id"], message["seq"]) == (
        "execution.result",
        "test_graph",
        seq,
    )
    assert (await client.receive_json_from(timeout=10))["data"]["node_exec_id"] == "for-everyone"
    await channel_layer.group_discard(graph_group_name("test_graph"), other)


@pytest.mark.parametrize(
    ("batch_events", "expected"),
    [
        (100, [("execution.results", ["a", "b", "c"])]),
        (
            1,
            [("execution.result", ["a"]), ("execution.result", ["b"]), ("execution.result", ["c"])],
        ),
    ],
)
async def test_another_group_member_gets_events_published_together_as_configured(
    alice: Any,
    channel_layer: Any,
    settings: Any,
    batch_events: int,
    expected: list[tuple[str, list[str]]],
) -> None:
    """Consecutive events of one graph reach other members as one "execution.results" message
    (its "events" in order), or one "execution.result" each with EXECUTIONS_LAYER_BATCH_EVENTS
    = 1, which processes that know only single events need during a rolling upgrade."""
    settings.EXECUTIONS_LAYER_BATCH_EVENTS = batch_events
    other = await channel_layer.new_channel()
    await channel_layer.group_add(graph_group_name("test_graph"), other)

    await send_execution_results([make_result(node_exec_id=node) for node in "abc"])

    received = []
    while sum(len(nodes) for _, nodes in received) < 3:
        message = await asyncio.wait_for(channel_layer.receive(other), timeout=10)
        events = message.get("events", [message])
        received.append(
            (
                message["type"],
                [json.loads(event["frame"])["data"]["node_exec_id"] for event in events],
            )
        )
    assert received == expected
    assert all(event["type"] == "execution.result" for event in message.get("events", []))
    await channel_layer.group_discard(graph_group_name("test_graph"), other)
