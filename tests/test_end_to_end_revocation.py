"""Revocation across processes: two daphne servers on Redis, a change made in a third process.

Alice holds connections on both servers. A password change or a deactivation made by another
process (``manage.py shell``, as an operator or a worker would) closes every one of them with
4001 and the reason, within two seconds; Bob's connections stay open. Subprocesses only, on a
SQLite file of their own (see test_end_to_end.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from executions.protocol import ErrorText, error_frame
from tests.servers import DaphneServer, Site, prepare_site, running
from tests.support import redis_url_or_skip

RUN = uuid.uuid4().hex[:12]
GRAPH = f"revoke-{RUN}"
REVOCATION_SECONDS = 2.0
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return prepare_site(tmp_path_factory.mktemp("revocation-site"))


@pytest.fixture(scope="module")
def servers(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DaphneServer]]:
    env = site.with_redis(redis_url_or_skip(), "pubsub")
    log_dir = tmp_path_factory.mktemp("revocation-logs")
    pair = [DaphneServer(env, log_dir, "revoke-a"), DaphneServer(env, log_dir, "revoke-b")]
    with running(*pair):
        yield pair


def change_user(site: Site, username: str, change: str) -> None:
    """Save a change to a user from a third process: ``manage.py shell -c``."""
    redis_env = site.with_redis(redis_url_or_skip(), "pubsub")
    code = (
        "from django.contrib.auth import get_user_model\n"
        f"user = get_user_model().objects.get(username={username!r})\n"
        f"{change}\n"
        "user.save()\n"
    )
    Site(site.database, redis_env).manage("shell", "-c", code)


async def subscribed(stack: AsyncExitStack, server: DaphneServer, who: Person) -> ClientConnection:
    client = await stack.enter_async_context(connect(f"{server.ws_url}?token={who.token}"))
    await client.send(json.dumps({"method": "subscribe", "data": {"graph_id": who.graph}}))
    async with asyncio.timeout(TIMEOUT):
        assert json.loads(await client.recv())["success"] is True
    return client


async def closed_for(client: ClientConnection) -> tuple[list[str], int]:
    """Everything the server sent until it closed, and the close code."""
    frames: list[str] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                frames.append(str(await client.recv()))
    except ConnectionClosed as closed:
        received = closed.rcvd
    if received is None:
        pytest.fail("the server sent no close frame")
    return frames, received.code


@dataclass(frozen=True)
class Person:
    username: str
    token: str
    graph: str


def person(site: Site, name: str) -> Person:
    """A new user with a token and a graph of their own, made by the management commands."""
    unique = f"{name}-{uuid.uuid4().hex[:8]}"
    token = site.token_for(unique)
    site.register_graph(f"{GRAPH}-{unique}", owner=unique)
    return Person(unique, token, f"{GRAPH}-{unique}")


@pytest.mark.redis
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("user.set_password('a-new-password-0123')", ErrorText.PASSWORD_CHANGED),
        ("user.is_active = False", ErrorText.USER_DEACTIVATED),
    ],
    ids=["password-change", "deactivation"],
)
async def test_a_change_in_a_third_process_closes_the_users_connections_on_every_server(
    site: Site, servers: list[DaphneServer], change: str, reason: str
) -> None:
    alice, bob = (
        await asyncio.to_thread(person, site, "alice"),
        await asyncio.to_thread(person, site, "bob"),
    )
    async with AsyncExitStack() as stack:
        alices = [await subscribed(stack, server, alice) for server in servers]
        bobs = [await subscribed(stack, server, bob) for server in servers]

        await asyncio.to_thread(change_user, site, alice.username, change)
        changed_at = time.monotonic()

        for client in alices:
            frames, code = await closed_for(client)
            assert time.monotonic() - changed_at < REVOCATION_SECONDS
            # daphne sends no close reasons: the error frame before the close carries it.
            assert (frames, code) == ([error_frame(reason)], 4001)
        for client in bobs:
            await client.send(json.dumps({"method": "heartbeat", "data": "ping"}))
            async with asyncio.timeout(TIMEOUT):
                assert json.loads(await client.recv())["data"] == "pong"
