"""Server-Sent Events in process: the real ASGI application, driven as a server would drive it."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator

from executions import history
from executions.events import send_execution_result, send_execution_results
from executions.fanout import local_fanout
from executions.models import ExecutionEvent
from executions.protocol import ErrorText
from executions.schemas import execution_event_frame
from executions.sse import HEARTBEAT, OPENING, SLOW_READER
from executions.tokens import mint_token
from tests.conftest import HOST, make_result

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5.0


@pytest.fixture(params=["memory", "redis-pubsub"])
def layer_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sse_bytes(result: Any, seq: int) -> bytes:
    """What the stream carries for a result numbered `seq`."""
    frame = execution_event_frame(result)
    return f"id: {seq}\nevent: execution_event\ndata: {frame}\n\n".encode()


class Stream:
    """One GET to the application, its response read chunk by chunk."""

    def __init__(self, application: Any, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        path, _, query = path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": [(b"host", HOST), *headers],
            "client": ("127.0.0.1", 40000),
            "server": ("localhost", 80),
        }
        self.communicator = ApplicationCommunicator(application, scope)
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.ended = False

    async def start(self) -> "Stream":
        await self.communicator.send_input({"type": "http.request", "body": b""})
        start = await self.communicator.receive_output(TIMEOUT)
        assert start["type"] == "http.response.start"
        self.status = start["status"]
        self.headers = dict(start["headers"])
        return self

    async def read_until(self, expected: bytes, seconds: float = TIMEOUT) -> bytes:
        """Read until the body holds `expected` bytes in all; return them."""
        async with asyncio.timeout(seconds):
            while len(self.body) < len(expected) and not self.ended:
                message = await self.communicator.receive_output(seconds)
                self.body += message.get("body", b"")
                self.ended = not message.get("more_body", False)
        return self.body

    async def read_to_end(self) -> bytes:
        async with asyncio.timeout(TIMEOUT):
            while not self.ended:
                message = await self.communicator.receive_output(TIMEOUT)
                self.body += message.get("body", b"")
                self.ended = not message.get("more_body", False)
        return self.body

    async def disconnect(self) -> None:
        await self.communicator.send_input({"type": "http.disconnect"})
        # The application returns once Django has cancelled the stream (bounded: raises else).
        await self.communicator.wait(TIMEOUT)


@pytest.fixture
async def open_stream(application: Any, channel_layer: Any) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Stream] = []

    async def open_one(
        graph_id: str = "test_graph", token: str | None = None, **headers: str
    ) -> Stream:
        raw = [
            (name.replace("_", "-").lower().encode(), value.encode())
            for name, value in headers.items()
        ]
        if token is not None:
            raw.append((b"authorization", f"Bearer {token}".encode()))
        stream = Stream(application, f"/api/graphs/{graph_id}/events", raw)
        opened.append(stream)
        return await stream.start()

    yield open_one
    for stream in opened:
        if not stream.ended:
            await stream.disconnect()


async def test_live_results_arrive_as_events_with_the_frame_as_data(
    open_stream: Any, alice_token: str
) -> None:
    stream = await open_stream(token=alice_token)
    assert stream.status == 200
    assert stream.headers[b"Content-Type"] == b"text/event-stream; charset=utf-8"
    assert stream.headers[b"Cache-Control"] == b"no-cache"
    await stream.read_until(OPENING)
    first, second = make_result(node_exec_id="one"), make_result(node_exec_id="two")

    await send_execution_result(first)
    await send_execution_result(second)

    expected = OPENING + sse_bytes(first, 1) + sse_bytes(second, 2)
    assert await stream.read_until(expected) == expected


async def test_last_event_id_resumes_exactly_then_goes_live(
    open_stream: Any, alice_token: str
) -> None:
    results = [make_result(node_exec_id=str(number)) for number in range(5)]
    await send_execution_results(results)

    stream = await open_stream(token=alice_token, last_event_id="2")
    live = make_result(node_exec_id="live")
    expected = OPENING + b"".join(sse_bytes(results[n - 1], n) for n in (3, 4, 5))
    assert await stream.read_until(expected) == expected
    await send_execution_result(live)

    expected += sse_bytes(live, 6)
    assert await stream.read_until(expected) == expected


async def test_since_in_the_query_resumes_too(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    results = [make_result(node_exec_id=str(number)) for number in range(3)]
    await send_execution_results(results)
    headers = [(b"authorization", f"Bearer {alice_token}".encode())]
    stream = await Stream(application, "/api/graphs/test_graph/events?since=0", headers).start()

    expected = OPENING + b"".join(sse_bytes(result, n + 1) for n, result in enumerate(results))
    assert await stream.read_until(expected) == expected
    await stream.disconnect()


async def test_no_gap_and_no_duplicate_while_publishing_during_the_replay(
    open_stream: Any, alice_token: str
) -> None:
    await send_execution_results(make_result(node_exec_id=str(n)) for n in range(1200))

    async def keep_publishing() -> None:
        for number in range(1200, 1400):
            await send_execution_result(make_result(node_exec_id=str(number)))
            await asyncio.sleep(0)

    publisher = asyncio.create_task(keep_publishing())
    stream = await open_stream(token=alice_token, last_event_id="0")
    await publisher
    expected_ids = list(range(1, 1401))
    async with asyncio.timeout(20):
        while stream.body.count(b"\nevent: execution_event\n") < 1400:
            await stream.read_until(stream.body + b"x", seconds=20)

    ids = [int(line[4:]) for line in stream.body.split(b"\n") if line.startswith(b"id: ")]
    assert ids == expected_ids


async def test_events_removed_by_retention_are_reported_as_a_gap_event(
    open_stream: Any, alice_token: str
) -> None:
    results = [make_result(node_exec_id=str(number)) for number in range(5)]
    await send_execution_results(results)
    await sync_to_async(lambda: ExecutionEvent.objects.filter(seq__lte=3).delete())()

    stream = await open_stream(token=alice_token, last_event_id="1")

    gap = b'event: gap\ndata: {"requested_since":1,"head":5,"oldest":4}\n\n'
    expected = OPENING + gap + sse_bytes(results[3], 4) + sse_bytes(results[4], 5)
    assert await stream.read_until(expected) == expected


async def test_a_live_gap_is_filled_from_the_history(open_stream: Any, alice_token: str) -> None:
    stream = await open_stream(token=alice_token)
    await stream.read_until(OPENING)
    lost = make_result(node_exec_id="lost")
    await sync_to_async(history.record)([lost])  # stored, never sent through the layer
    after = make_result(node_exec_id="after")

    await send_execution_result(after)

    expected = OPENING + sse_bytes(lost, 1) + sse_bytes(after, 2)
    assert await stream.read_until(expected) == expected


async def test_an_idle_stream_gets_heartbeat_comments(
    open_stream: Any, alice_token: str, settings: Any
) -> None:
    settings.EXECUTIONS_SSE_HEARTBEAT_SECONDS = 0.1
    stream = await open_stream(token=alice_token)

    expected = OPENING + HEARTBEAT + HEARTBEAT
    assert await stream.read_until(expected) == expected


async def test_a_session_authenticates_like_the_history_api(
    application: Any, channel_layer: Any, alice: Any
) -> None:
    from django.test import Client

    client = Client()
    await sync_to_async(client.force_login)(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    stream = await Stream(
        application, "/api/graphs/test_graph/events", [(b"cookie", cookie)]
    ).start()

    assert stream.status == 200
    assert await stream.read_until(OPENING) == OPENING
    await stream.disconnect()


@pytest.mark.parametrize(
    ("graph_id", "status"),
    [("bobs_graph", 403), ("no_such_graph", 403), ("x" * 300, 403)],
)
async def test_another_users_or_a_missing_graph_is_refused_before_streaming(
    open_stream: Any, make_user: Any, alice_token: str, graph_id: str, status: int
) -> None:
    await sync_to_async(make_user)("bob", graphs=("bobs_graph",))
    stream = await open_stream(graph_id, token=alice_token)

    assert stream.status == status
    body = json.loads(await stream.read_to_end())
    assert body == {"error": "Not allowed to read this graph."}


async def test_no_or_a_bad_credential_is_a_401_and_a_bad_last_event_id_a_400(
    open_stream: Any, alice_token: str
) -> None:
    missing = await open_stream()
    bad = await open_stream(token="not-a-token")
    wrong_id = await open_stream(token=alice_token, last_event_id="abc")

    assert (missing.status, bad.status, wrong_id.status) == (401, 401, 400)
    assert json.loads(await missing.read_to_end()) == {"error": "Missing or invalid credentials."}


async def test_disconnecting_gives_the_fan_out_membership_back(
    open_stream: Any, alice_token: str, channel_layer: Any
) -> None:
    streams = [await open_stream(token=alice_token) for _ in range(3)]
    for stream in streams:
        await stream.read_until(OPENING)
    fanout = local_fanout(channel_layer)
    assert len(fanout.members["test_graph"]) == 3

    for stream in streams:
        await stream.disconnect()

    assert "test_graph" not in fanout.members
    assert fanout.connections == {}


async def test_a_password_change_ends_the_stream_with_an_error_event(
    open_stream: Any, alice: Any, alice_token: str, channel_layer: Any
) -> None:
    stream = await open_stream(token=alice_token)
    await stream.read_until(OPENING)

    def change_password() -> None:
        alice.set_password("a-new-password")
        alice.save()

    await sync_to_async(change_password)()

    error = json.dumps({"error": ErrorText.PASSWORD_CHANGED}, separators=(",", ":")).encode()
    assert await stream.read_to_end() == OPENING + b"event: error\ndata: " + error + b"\n\n"
    fanout = local_fanout(channel_layer)
    assert "test_graph" not in fanout.members
    assert fanout.connections == {}


async def test_a_replay_stops_when_the_credential_is_revoked(
    open_stream: Any, alice: Any, alice_token: str, channel_layer: Any
) -> None:
    from executions import history

    stored = 5000
    results = [make_result(node_exec_id=f"replayed-{n}") for n in range(stored)]
    await sync_to_async(history.record)(results)
    stream = await open_stream(token=alice_token, last_event_id="0")
    await stream.read_until(OPENING + b"id: 1\n")  # the first page is on its way

    def change_password() -> None:
        alice.set_password("changed-during-the-replay")
        alice.save()

    await sync_to_async(change_password)()

    body = await stream.read_to_end()
    error = json.dumps({"error": ErrorText.PASSWORD_CHANGED}, separators=(",", ":")).encode()
    assert body.endswith(b"event: error\ndata: " + error + b"\n\n")
    assert body.count(b"event: execution_event") < stored  # stopped at the revocation


async def test_a_slow_reader_gets_an_error_event_and_the_stream_ends(
    open_stream: Any, alice_token: str, settings: Any, channel_layer: Any
) -> None:
    settings.EXECUTIONS_MAX_BACKLOG_BYTES = 2000
    stream = await open_stream(token=alice_token)
    await stream.read_until(OPENING)

    # One batch is handed out in one go, before the stream gets a turn: its backlog overflows.
    await send_execution_results(make_result(node_exec_id=str(n)) for n in range(50))

    body = await stream.read_to_end()
    error = json.dumps({"error": SLOW_READER}, separators=(",", ":")).encode()
    assert body == OPENING + b"event: error\ndata: " + error + b"\n\n"
    assert "test_graph" not in local_fanout(channel_layer).members


async def test_graph_ids_with_slashes_reach_each_route(
    application: Any, channel_layer: Any, make_user: Any
) -> None:
    """ "a/events" has a history, "a/executions" a stream: neither route takes the other's."""
    owner = await sync_to_async(make_user)("carol", graphs=("a/events", "a/executions"))
    token = await sync_to_async(lambda: mint_token(owner).token)()
    headers = [(b"authorization", f"Bearer {token}".encode())]

    page = await Stream(application, "/api/graphs/a/events/executions", headers).start()
    stream = await Stream(application, "/api/graphs/a/executions/events", headers).start()

    assert page.status == 200
    assert json.loads(await page.read_to_end())["graph_id"] == "a/events"
    assert stream.headers[b"Content-Type"].startswith(b"text/event-stream")
    result = make_result(graph_id="a/executions", node_exec_id="slashed")
    await stream.read_until(OPENING)
    await send_execution_result(result)
    expected = OPENING + sse_bytes(result, 1)
    assert await stream.read_until(expected) == expected
    await stream.disconnect()


async def test_streams_count_with_websockets_toward_the_connection_limits(
    open_stream: Any, connect: Any, alice_token: str, settings: Any
) -> None:
    settings.EXECUTIONS_MAX_CONNECTIONS_PER_USER = 1
    stream = await open_stream(token=alice_token)
    assert await stream.read_until(OPENING) == OPENING
    too_many = "Too many connections for this user: at most 1."

    websocket = await connect(token=alice_token)
    refused = await open_stream(token=alice_token)

    assert (await websocket.receive_json_from(timeout=TIMEOUT))["error"] == too_many
    assert (await websocket.receive_output(timeout=TIMEOUT))["code"] == 4030
    assert refused.status == 429
    assert json.loads(await refused.read_to_end()) == {"error": too_many}
    await stream.disconnect()
    # The stream gave its slot back when it ended.
    again = await open_stream(token=alice_token)
    assert (again.status, await again.read_until(OPENING)) == (200, OPENING)
