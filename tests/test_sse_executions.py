"""One execution over Server-Sent Events: ``GET <api>/executions/<graph_exec_id>/events``.

The events are AutoGPT's frames for ``subscribe_graph_execution``, named by their method, with
their graph's sequence number as the id.
"""

from typing import Any

import pytest
from asgiref.sync import sync_to_async

from executions.events import (
    send_execution_result,
    send_graph_execution_event,
    send_node_execution_event,
)
from executions.schemas import Methods, NodeExecutionEvent
from executions.sse import OPENING
from executions.tokens import mint_token
from tests.conftest import make_result
from tests.test_autogpt_protocol import autogpt_frame, graph_event, node_event
from tests.test_sse import Stream

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["memory", "redis-pubsub"])
def layer_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sse_bytes(method: Methods, channel: str, event: Any, seq: int) -> bytes:
    frame = autogpt_frame(method, channel, event)
    return f"id: {seq}\nevent: {method.value}\ndata: {frame}\n\n".encode()


async def open_execution(
    application: Any, graph_exec_id: str, token: str, **headers: str
) -> Stream:
    raw = [(b"authorization", f"Bearer {token}".encode())]
    raw += [
        (name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()
    ]
    return await Stream(application, f"/api/executions/{graph_exec_id}/events", raw).start()


async def test_an_executions_events_arrive_as_autogpts_frames(
    application: Any, channel_layer: Any, alice: Any, alice_token: str
) -> None:
    user_id = str(alice.pk)
    channel = f"{user_id}|graph_exec#exec-1"
    await send_node_execution_event(node_event(user_id))  # seq 1
    stream = await open_execution(application, "exec-1", alice_token)
    await stream.read_until(OPENING)  # following live from here
    running = node_event(user_id, node_id="node-2")
    result = make_result(graph_exec_id="exec-1", node_id="node-3")
    finished = graph_event(user_id)

    await send_node_execution_event(running)  # 2
    await send_node_execution_event(node_event(user_id, graph_exec_id="exec-2"))  # 3: not this one
    await send_execution_result(result)  # 4
    await send_graph_execution_event(finished)  # 5

    assert stream.status == 200
    assert stream.headers[b"Content-Type"] == b"text/event-stream; charset=utf-8"
    as_node = NodeExecutionEvent(user_id=user_id, **result.model_dump())
    expected = (
        OPENING
        + sse_bytes(Methods.NODE_EXECUTION_EVENT, channel, running, 2)
        + sse_bytes(Methods.NODE_EXECUTION_EVENT, channel, as_node, 4)
        + sse_bytes(Methods.GRAPH_EXECUTION_EVENT, channel, finished, 5)
    )
    assert await stream.read_until(expected) == expected
    await stream.disconnect()


async def test_last_event_id_resumes_that_execution_exactly(
    application: Any, channel_layer: Any, alice: Any, alice_token: str
) -> None:
    user_id = str(alice.pk)
    channel = f"{user_id}|graph_exec#exec-1"
    mine = [node_event(user_id, node_id=f"node-{n}") for n in range(3)]
    await send_node_execution_event(mine[0])  # 1
    await send_node_execution_event(mine[1])  # 2
    await send_graph_execution_event(graph_event(user_id, graph_exec_id="exec-2"))  # 3
    await send_node_execution_event(mine[2])  # 4

    stream = await open_execution(application, "exec-1", alice_token, last_event_id="1")

    expected = (
        OPENING
        + sse_bytes(Methods.NODE_EXECUTION_EVENT, channel, mine[1], 2)
        + sse_bytes(Methods.NODE_EXECUTION_EVENT, channel, mine[2], 4)
    )
    assert await stream.read_until(expected) == expected
    await stream.disconnect()


async def test_another_users_execution_is_answered_like_a_missing_one(
    application: Any, channel_layer: Any, alice: Any, make_user: Any
) -> None:
    await send_node_execution_event(node_event(str(alice.pk)))
    bob_token = await sync_to_async(lambda: mint_token(make_user("bob")).token)()

    someone_elses = await open_execution(application, "exec-1", bob_token)
    missing = await open_execution(application, "no-such-run", bob_token)

    assert someone_elses.status == missing.status == 404
    assert await someone_elses.read_to_end() == await missing.read_to_end()
    assert someone_elses.body == b'{"error": "Graph execution not found."}'


async def test_without_credentials_the_stream_is_refused(
    application: Any, channel_layer: Any, alice: Any
) -> None:
    await send_node_execution_event(node_event(str(alice.pk)))

    stream = await Stream(application, "/api/executions/exec-1/events", []).start()

    assert stream.status == 401
