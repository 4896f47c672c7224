"""The Python client (executions.client) against real daphne processes, and a scripted server.

The real servers are subprocesses sharing a SQLite file of their own (tests.servers); one of them
is killed and restarted on the same port mid-stream. The scripted server (websockets, in this
process) plays what daphne cannot be made to do on cue: a 4008 close, a replayed duplicate, a
server that stops answering heartbeats, error frames and invalid results. Every wait is bounded.
"""

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from executions.client import (
    AuthenticationFailed,
    ConnectionLost,
    ConnectionState,
    ExecutionStream,
    ProtocolError,
    Reconnect,
    Subscription,
    SubscriptionRefused,
    connect,
)
from executions.schemas import ExecutionResult, GraphExecutionEvent, NodeExecutionEvent
from tests.servers import DaphneServer, Site, post_executions, prepare_site
from tests.support import free_port

RUN = uuid.uuid4().hex[:8]
RECEIVE_TIMEOUT = 10.0
# Reconnect quickly and keep trying while a server restarts.
FAST_RECONNECT = Reconnect(initial_delay=0.05, max_delay=0.3, max_attempts=None, max_elapsed=30)


# --- the site and its servers -------------------------------------------------------------


@dataclass(frozen=True)
class People:
    site: Site
    alice_token: str
    graphs: tuple[str, ...]  # Alice's
    bobs_graph: str


def register_graphs(site: Site, owner: str, graph_ids: tuple[str, ...]) -> None:
    """Register several graphs in one manage.py process (one register_graph each is slower)."""
    code = (
        "from django.contrib.auth import get_user_model\n"
        "from executions.models import Graph\n"
        f"owner, _ = get_user_model().objects.get_or_create(username={owner!r})\n"
        f"for graph_id in {list(graph_ids)!r}:\n"
        "    Graph.objects.get_or_create(pk=graph_id, defaults={'owner': owner})\n"
    )
    site.manage("shell", "-c", code)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> People:
    site = prepare_site(tmp_path_factory.mktemp("client-site"))
    graphs = tuple(f"client-{RUN}-{index}" for index in range(6))
    bobs_graph = f"client-{RUN}-bob"
    token = site.token_for("alice")
    register_graphs(site, "alice", graphs)
    register_graphs(site, "bob", (bobs_graph,))
    return People(site, token, graphs, bobs_graph)


@pytest.fixture(scope="module")
def server(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneServer]:
    with DaphneServer(people.site.env, tmp_path_factory.mktemp("client-logs")) as daphne:
        yield daphne


class SamePortDaphne(DaphneServer):
    """A daphne that comes back on the same port after being stopped or killed."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, name: str) -> None:
        super().__init__(env, log_dir, name, port=free_port())

    def kill(self) -> None:
        """SIGKILL: the clients' connections drop with no close frame at all."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=5)

    def restart(self) -> None:
        self.start()
        self.wait_ready()


# --- events -------------------------------------------------------------------------------


def execution(graph_id: str, index: int, status: str = "COMPLETED") -> dict[str, Any]:
    return {
        "graph_id": graph_id,
        "graph_version": 1,
        "graph_exec_id": f"exec-{RUN}",
        "node_exec_id": f"node-exec-{index:04d}",
        "node_id": f"node-{index % 3}",
        "block_id": "block-ai-text",
        "status": status,
        "input_data": {"prompt": "Grüße ✓", "n": index},
        "output_data": {"response": [f"answer {index}"]},
        "add_time": "2025-01-02T03:04:05Z",
        "queue_time": "2025-01-02T03:04:05Z",
        "start_time": "2025-01-02T03:04:06Z",
        "end_time": "2025-01-02T03:04:07Z",
    }


async def publish(server: DaphneServer, graph_id: str, indices: range) -> None:
    bodies = [execution(graph_id, index) for index in indices]
    assert await post_executions(server, bodies, seconds=RECEIVE_TIMEOUT) == (
        202,
        {"accepted": len(bodies)},
    )


async def take(subscription: Subscription, count: int) -> list[tuple[int, ExecutionResult]]:
    """The next `count` results with the position after each."""
    taken: list[tuple[int, ExecutionResult]] = []
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        for _ in range(count):
            result = await anext(subscription)
            assert subscription.position is not None
            taken.append((subscription.position, result))
    return taken


async def nothing_more(subscription: Subscription, seconds: float = 0.3) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await anext(subscription)
            return False
    return True


async def eventually(condition: Callable[[], bool], seconds: float = RECEIVE_TIMEOUT) -> None:
    """Wait, a bounded while, until `condition()` holds."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still not true after {seconds} s")


async def acknowledged(subscription: Subscription) -> None:
    """Wait until the server has answered the subscribe request (it reported its head)."""
    await eventually(lambda: subscription.head is not None)


# --- against daphne -----------------------------------------------------------------------


async def test_subscribe_yields_validated_results_with_their_positions(
    server: DaphneServer, people: People
) -> None:
    graph_id = people.graphs[0]
    await publish(server, graph_id, range(3))
    async with connect(server.ws_url, token=people.alice_token) as stream:
        assert stream.state == ConnectionState.CONNECTED
        subscription = stream.subscribe(graph_id, since=0)
        replayed = await take(subscription, 3)
        await publish(server, graph_id, range(3, 5))
        live = await take(subscription, 2)
        assert await nothing_more(subscription)
        assert stream.position(graph_id) == 5

    received = replayed + live
    assert all(isinstance(result, ExecutionResult) for _, result in received)
    assert [position for position, _ in received] == [1, 2, 3, 4, 5]
    assert [result.node_exec_id for _, result in received] == [
        f"node-exec-{index:04d}" for index in range(5)
    ]
    assert received[0][1] == ExecutionResult.model_validate(execution(graph_id, 0))
    assert stream.state == ConnectionState.CLOSED


async def test_without_since_only_live_results_arrive_and_snapshot_gives_the_latest_state(
    server: DaphneServer, people: People
) -> None:
    graph_id = people.graphs[1]
    await publish(server, graph_id, range(4))  # nodes 0, 1, 2, 0: the latest of each is 1, 2, 3
    async with connect(server.ws_url, token=people.alice_token) as stream:
        live = stream.subscribe(graph_id)
        await acknowledged(live)
        assert live.position == 4  # the head: resuming from here misses nothing
        await publish(server, graph_id, range(4, 6))
        assert [position for position, _ in await take(live, 2)] == [5, 6]
        assert await nothing_more(live)
        await live.aclose()

        snapshot = stream.subscribe(graph_id, snapshot=True)
        latest = await take(snapshot, 3)
        assert [(p, r.node_id) for p, r in latest] == [(4, "node-0"), (5, "node-1"), (6, "node-2")]
        assert await nothing_more(snapshot)


async def test_reconnects_and_resumes_across_a_killed_and_a_restarted_server(
    people: People, tmp_path: Path
) -> None:
    """Killed (no close frame), then SIGTERM (1012): every event once, in order, none lost."""
    graph_id = people.graphs[2]
    states: list[ConnectionState] = []
    server = SamePortDaphne(people.site.env, tmp_path, "restarting")
    with server:
        async with connect(
            server.ws_url,
            token=people.alice_token,
            reconnect=FAST_RECONNECT,
            heartbeat_interval=1.0,
            on_state=lambda state, detail: states.append(state),
        ) as stream:
            subscription = stream.subscribe(graph_id, since=0)
            await publish(server, graph_id, range(5))
            received = await take(subscription, 3)  # two more wait in the client, unread

            server.kill()
            # Published while the client is away, through another process on the same database.
            with DaphneServer(people.site.env, tmp_path, "meanwhile") as other:
                await publish(other, graph_id, range(5, 10))
            server.restart()
            await publish(server, graph_id, range(10, 12))
            received += await take(subscription, 9)
            assert stream.reconnects == 1

            server.stop()  # SIGTERM: daphne tells every client 1012, reconnect
            server.restart()
            await publish(server, graph_id, range(12, 15))
            received += await take(subscription, 3)
            assert await nothing_more(subscription)
            assert stream.reconnects == 2

    assert [position for position, _ in received] == list(range(1, 16))
    assert [result.node_exec_id for _, result in received] == [
        f"node-exec-{index:04d}" for index in range(15)
    ]
    assert ConnectionState.RECONNECTING in states
    assert states[-1] == ConnectionState.CLOSED


async def test_a_token_source_replaces_an_expired_token_and_the_stream_resumes(
    server: DaphneServer, people: People
) -> None:
    graph_id = people.graphs[5]
    minted: list[str] = []

    async def fresh_token() -> str:
        # A 2-second token each time, as a service minting through its own credentials would.
        token = await asyncio.to_thread(people.site.token_for, "alice", 2, False)
        minted.append(token)
        return token

    async with connect(server.ws_url, token=fresh_token, reconnect=FAST_RECONNECT) as stream:
        subscription = stream.subscribe(graph_id, since=0)
        await publish(server, graph_id, range(2))
        received = await take(subscription, 2)
        await eventually(lambda: stream.reconnects >= 1, seconds=8)  # the first token expired
        await publish(server, graph_id, range(2, 4))
        received += await take(subscription, 2)

    assert [position for position, _ in received] == [1, 2, 3, 4]
    assert len(minted) >= 2
    assert len(set(minted)) == len(minted)


@pytest.mark.parametrize(
    ("token", "reason"),
    [("not-a-token", "Invalid token"), (None, "Missing authentication token")],
)
async def test_a_refused_token_raises_authentication_failed_with_the_reason(
    server: DaphneServer, token: str | None, reason: str
) -> None:
    with pytest.raises(AuthenticationFailed) as refused:
        async with connect(server.ws_url, token=token, reconnect=FAST_RECONNECT):
            pytest.fail("connected with a refused token")
    assert refused.value.reason == reason
    assert refused.value.code == 4001


async def test_another_users_graph_raises_subscription_refused_and_the_rest_goes_on(
    server: DaphneServer, people: People
) -> None:
    async with connect(server.ws_url, token=people.alice_token) as stream:
        refused = stream.subscribe(people.bobs_graph, since=0)
        with pytest.raises(SubscriptionRefused) as error:
            await take(refused, 1)
        assert error.value.graph_id == people.bobs_graph
        assert error.value.reason == "Not allowed to subscribe to this graph."

        allowed = stream.subscribe(people.graphs[3], since=0)
        await publish(server, people.graphs[3], range(1))
        assert [position for position, _ in await take(allowed, 1)] == [1]


async def test_follow_execution_yields_autogpts_events_of_that_run_only(
    server: DaphneServer, people: People
) -> None:
    graph_id = f"client-{RUN}-runs"
    register_graphs(people.site, "alice", (graph_id,))
    run, other = f"run-{RUN}", f"other-{RUN}"
    node = {**execution(graph_id, 0), "graph_exec_id": run}
    await post_executions(server, [node, {**execution(graph_id, 1), "graph_exec_id": other}])
    async with connect(server.ws_url, token=people.alice_token) as stream:
        following = stream.follow_execution(run, since=0)
        replayed = await take(following, 1)
        finished = {
            "id": run,
            "user_id": "u-1",
            "graph_id": graph_id,
            "graph_version": 1,
            "inputs": {},
            "status": "COMPLETED",
            "started_at": "2025-01-02T03:04:05Z",
            "ended_at": "2025-01-02T03:04:09Z",
            "outputs": {"answer": [42]},
            "event_type": "graph_execution_update",
        }
        await post_executions(
            server, [{**execution(graph_id, 2), "graph_exec_id": other}, finished]
        )
        live = await take(following, 1)
        assert await nothing_more(following)
        assert following.graph_id == graph_id

    (first_seq, first), (last_seq, last) = replayed + live
    assert (first_seq, last_seq) == (1, 4)  # the graph's numbers; 2 and 3 are the other run's
    assert isinstance(first, NodeExecutionEvent)
    assert first.result() == ExecutionResult.model_validate(node)
    assert isinstance(last, GraphExecutionEvent)
    assert last == GraphExecutionEvent.model_validate(finished)


async def test_following_another_users_execution_raises_subscription_refused(
    server: DaphneServer, people: People
) -> None:
    run = f"bobs-run-{RUN}"
    await post_executions(server, [{**execution(people.bobs_graph, 0), "graph_exec_id": run}])
    async with connect(server.ws_url, token=people.alice_token) as stream:
        refused = stream.follow_execution(run)
        with pytest.raises(SubscriptionRefused) as error:
            await take(refused, 1)

    assert error.value.graph_id == run
    assert error.value.reason == "Graph execution not found."


async def test_an_unreachable_server_raises_connection_lost_within_the_budget() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    budget = Reconnect(initial_delay=0.01, max_delay=0.05, max_attempts=3)
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        with pytest.raises(ConnectionLost) as lost:
            async with connect(url, token="t", reconnect=budget):
                pytest.fail("connected to nothing")
    assert lost.value.attempts == 3


def test_invalid_arguments_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="ws://"):
        connect("http://127.0.0.1:8000/ws")
    with pytest.raises(ValueError, match="heartbeat_interval"):
        connect("ws://127.0.0.1:8000/ws", heartbeat_interval=0)
    with pytest.raises(ValueError, match="jitter"):
        Reconnect(jitter=2)
    delays = [Reconnect(jitter=0).delay(attempt) for attempt in range(1, 9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert 0.25 <= Reconnect(jitter=0.5).delay(1) <= 0.5


# --- against a scripted server ------------------------------------------------------------


def ack(graph_id: str, head: int, oldest: int = 1, truncated: bool = False) -> str:
    data = {"head": head, "oldest": oldest, "truncated": truncated}
    return json.dumps(
        {"method": "subscribe", "data": data, "success": True, "channel": graph_id, "error": None}
    )


def event(graph_id: str, seq: int, data: dict[str, Any] | None = None) -> str:
    body = execution(graph_id, seq) if data is None else data
    return json.dumps(
        {
            "method": "execution_event",
            "data": body,
            "success": None,
            "channel": graph_id,
            "error": None,
            "seq": seq,
        }
    )


def error(text: str, channel: str | None = None) -> str:
    return json.dumps(
        {"method": "error", "data": None, "success": False, "channel": channel, "error": text}
    )


PONG = json.dumps(
    {"method": "heartbeat", "data": "pong", "success": True, "channel": None, "error": None}
)


@dataclass
class Script:
    """What the scripted server saw: each connection's requests."""

    requests: list[list[dict[str, Any]]]


@contextlib.asynccontextmanager
async def scripted_server() -> AsyncIterator[tuple[str, Script]]:
    """Connection 1 closes with 4008 after two events; connection 2 replays a duplicate, then
    goes silent; connection 3 answers a subscribe with an error and sends an invalid result."""
    script = Script(requests=[])
    numbers = itertools.count(1)

    async def handler(ws: ServerConnection) -> None:
        number = next(numbers)
        seen: list[dict[str, Any]] = []
        script.requests.append(seen)
        silent = False
        async for text in ws:
            request = json.loads(text)
            seen.append(request)
            method, data = request["method"], request.get("data")
            if method == "heartbeat":
                if not silent:
                    await ws.send(PONG)
            elif method == "subscribe" and data["graph_id"] == "G" and number == 1:
                await ws.send(ack("G", head=2))
                await ws.send(event("G", 1))
                await ws.send(event("G", 2))
                await ws.send(error("Too slow: reconnect and subscribe with since."))
                await ws.close(4008)
            elif method == "subscribe" and data["graph_id"] == "G" and number == 2:
                await ws.send(ack("G", head=3))
                await ws.send(event("G", 2))  # already received: dropped by the client
                await ws.send(event("G", 3))
                silent = True  # from now on the server answers nothing
            elif method == "subscribe" and data["graph_id"] == "G":
                await ws.send(ack("G", head=3))
            elif method == "subscribe" and data["graph_id"] == "X":
                await ws.send(error("Too many subscriptions: at most 1 per connection.", "X"))
                await ws.send(event("G", 4, data={"graph_id": "G", "status": "DONE?"}))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws", script


async def test_slow_consumer_close_silent_server_and_protocol_errors(caplog: Any) -> None:
    async with scripted_server() as (url, script):
        stream: ExecutionStream
        async with connect(
            url, token="t", reconnect=FAST_RECONNECT, heartbeat_interval=0.2
        ) as stream:
            subscription = stream.subscribe("G", since=0)
            received = await take(subscription, 3)
            await eventually(lambda: len(script.requests) == 3)  # the silent one was given up
            other = stream.subscribe("X", since=0)
            with pytest.raises(ProtocolError, match="Too many subscriptions") as refused:
                await take(other, 1)
            assert refused.value.channel == "X"
            with pytest.raises(ProtocolError, match="not a valid ExecutionResult"):
                await take(subscription, 1)

    assert [position for position, _ in received] == [1, 2, 3]
    subscribes = [
        [request["data"] for request in requests if request["method"] == "subscribe"]
        for requests in script.requests
    ]
    assert subscribes[:3] == [
        [{"graph_id": "G", "since": 0}],
        [{"graph_id": "G", "since": 2}],
        [{"graph_id": "G", "since": 3}, {"graph_id": "X", "since": 0}],
    ]
    heartbeats_while_silent = [r for r in script.requests[1] if r["method"] == "heartbeat"]
    assert len(heartbeats_while_silent) >= 2  # the first proves the token, then periodic ones
    assert stream.reconnects == 2
    assert "No answer to a heartbeat" in caplog.text


async def test_a_snapshot_cut_short_resumes_after_its_last_frame_not_with_a_new_snapshot() -> None:
    """The snapshot of a graph whose head is not one of its frames (another run's event, a graph
    event its view leaves out) never reaches that head; a reconnect must still miss nothing."""
    requests: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        first_connection = not requests
        async for text in ws:
            request = json.loads(text)
            if request["method"] == "heartbeat":
                await ws.send(PONG)
                continue
            requests.append(request["data"])
            if first_connection:
                await ws.send(ack("G", head=10))
                await ws.send(event("G", 4))  # the latest of two nodes; 5 to 10 are not shown
                await ws.send(event("G", 7))
                await ws.close(1012)
            else:
                await ws.send(ack("G", head=12))
                for seq in (8, 11, 12):  # what the replay after 7 holds for this view
                    await ws.send(event("G", seq))

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        async with connect(url, token="t", reconnect=FAST_RECONNECT) as stream:
            subscription = stream.subscribe("G", snapshot=True)
            received = await take(subscription, 5)
            assert await nothing_more(subscription)

    assert requests == [{"graph_id": "G", "snapshot": True}, {"graph_id": "G", "since": 7}]
    assert [position for position, _ in received] == [4, 7, 8, 11, 12]
    assert stream.reconnects == 1


# --- where the token travels --------------------------------------------------------------


@contextlib.asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[str, list[tuple[str, list[str], Any]]]]:
    """Answers heartbeats; records each handshake's path, Authorization and X-Trace headers."""
    handshakes: list[tuple[str, list[str], Any]] = []

    async def handler(ws: ServerConnection) -> None:
        headers = ws.request.headers
        handshakes.append(
            (ws.request.path, headers.get_all("Authorization"), headers.get("X-Trace"))
        )
        async for text in ws:
            if json.loads(text)["method"] == "heartbeat":
                await ws.send(PONG)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws", handshakes


async def test_the_token_goes_in_the_authorization_header_never_in_the_url() -> None:
    async def fresh_token() -> str:
        return "fresh-token.abc"

    async with recording_server() as (url, handshakes):
        async with connect(url, token="a-token.xyz", reconnect=FAST_RECONNECT):
            pass
        # A token in the given URL is dropped; the caller's other headers are kept.
        async with connect(
            f"{url}?keep=1&token=stale",
            token=fresh_token,
            reconnect=FAST_RECONNECT,
            additional_headers={"X-Trace": "1", "Authorization": "Basic eDp5"},
        ):
            pass
        async with connect(url, reconnect=FAST_RECONNECT):
            pass

    assert handshakes == [
        ("/ws", ["Bearer a-token.xyz"], None),
        ("/ws?keep=1", ["Bearer fresh-token.abc"], "1"),
        ("/ws", [], None),
    ]
