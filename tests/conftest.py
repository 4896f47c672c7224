"""Shared fixtures: a fresh channel layer per test, users with graphs, a WebSocket factory."""

import functools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import connections

from executions.layers import channel_layer_config
from executions.models import Graph
from executions.schemas import ExecutionResult, ExecutionStatus
from executions.tokens import mint_token
from executions.writers import writers
from tests.support import redis_url_or_skip

# The site as a browser on http://localhost sees it: its Host, and the Origin of its pages.
HOST = b"localhost"
ALLOWED_ORIGIN = b"http://localhost"


def browser_headers(
    origin: bytes = ALLOWED_ORIGIN, host: bytes = HOST
) -> list[tuple[bytes, bytes]]:
    """The Host and Origin headers of a browser's handshake (the Origin must match exactly)."""
    return [(b"host", host), (b"origin", origin)]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    """An SQLite test database in a file, as the project runs on, not in memory.

    In memory, SQLite shares one cache between connections and locks whole tables: the writer
    thread's commit and a replay's read on another connection would refuse each other at once
    ("database table is locked"), which never happens to a file in WAL mode with a busy timeout.
    """
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        test_name = tmp_path_factory.mktemp("database") / "test.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(test_name)


@pytest.fixture(scope="session", autouse=True)
def pooled_connections_closed(django_db_setup: None) -> Iterator[None]:
    """Have the threads that keep database connections let go of the test database.

    The ingest's writer threads, and asgiref's thread for thread-sensitive sync_to_async calls
    from async tests, keep theirs (CONN_MAX_AGE): the test database could not be dropped.
    """
    yield
    writers.close()
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)


def layer_settings(kind: str) -> dict[str, Any]:
    """CHANNEL_LAYERS for a kind of layer, isolated from other tests by a unique prefix."""
    if kind == "memory":
        return channel_layer_config()
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    return channel_layer_config(redis_url_or_skip(), kind.removeprefix("redis-"), prefix)


@pytest.fixture(params=["memory"])
def layer_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def channel_layer(settings: Any, layer_kind: str) -> AsyncIterator[Any]:
    """A fresh channel layer of the requested kind, flushed afterwards."""
    settings.CHANNEL_LAYERS = {"default": layer_settings(layer_kind)}
    layer = get_channel_layer()
    yield layer
    await layer.flush()


@pytest.fixture
def application() -> Any:
    from project.asgi import application

    return application


# Hashed once a session: PBKDF2 takes 0.3 s a password, paid by most tests (salts are alike).
_hashed_password = functools.cache(make_password)


@pytest.fixture
def make_user(transactional_db: None) -> Callable[..., Any]:
    def make(username: str = "alice", graphs: tuple[str, ...] = ()) -> Any:
        password = _hashed_password("pw-" + username)
        user = get_user_model().objects.create(username=username, password=password)
        for graph_id in graphs:
            Graph.objects.create(pk=graph_id, owner=user)
        return user

    return make


@pytest.fixture
def alice(make_user: Callable[..., Any]) -> Any:
    return make_user("alice", graphs=("test_graph", "graph-2"))


@pytest.fixture
def alice_token(alice: Any) -> str:
    return mint_token(alice).token


@pytest.fixture
async def connect(application: Any, channel_layer: Any) -> AsyncIterator[Callable[..., Any]]:
    """Open WebSocket connections to the real ASGI app; disconnect them all afterwards."""
    opened: list[WebsocketCommunicator] = []

    async def open_connection(
        token: str | None = None,
        origin: bytes | None = ALLOWED_ORIGIN,
        expect_accept: bool = True,
    ) -> WebsocketCommunicator:
        path = "/ws" if token is None else f"/ws?token={token}"
        headers = browser_headers(origin) if origin is not None else [(b"host", HOST)]
        communicator = WebsocketCommunicator(application, path, headers=headers)
        opened.append(communicator)
        connected, _ = await communicator.connect(timeout=5)
        assert connected is expect_accept
        return communicator

    yield open_connection
    for communicator in opened:
        if getattr(communicator, "crashed_as_expected", False):
            continue  # the test asserted how its application ended
        await communicator.disconnect(timeout=5)


def make_result(
    graph_id: str = "test_graph", aware: bool = True, **overrides: Any
) -> ExecutionResult:
    now = datetime.now(tz=UTC) if aware else datetime.now()
    fields: dict[str, Any] = {
        "graph_id": graph_id,
        "graph_version": 1,
        "graph_exec_id": "test_exec_id",
        "node_exec_id": "test_node_exec_id",
        "node_id": "test_node_id",
        "block_id": "test_block_id",
        "status": ExecutionStatus.COMPLETED,
        "input_data": {"input1": "value1"},
        "output_data": {"output1": ["result1"]},
        "add_time": now,
        "queue_time": None,
        "start_time": now,
        "end_time": now,
    }
    fields.update(overrides)
    return ExecutionResult(**fields)


@pytest.fixture
def result_factory() -> Callable[..., ExecutionResult]:
    return make_result


async def subscribe(
    communicator: WebsocketCommunicator, graph_id: str, reply_within: float = 5
) -> dict[str, Any]:
    await communicator.send_json_to({"method": "subscribe", "data": {"graph_id": graph_id}})
    reply: dict[str, Any] = await communicator.receive_json_from(timeout=reply_within)
    return reply
