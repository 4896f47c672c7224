"""Helpers shared by tests that need real services or subprocesses."""

import os
import socket
from functools import cache
from typing import Any

import django
import pytest

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# For the tests of executions.tasks and executions.demo_tasks, whose tasks need django.tasks.
needs_django_tasks = pytest.mark.skipif(
    django.VERSION < (6, 0),
    reason=f"django.tasks is new in Django 6.0; this is Django {django.get_version()}",
)


@cache
def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_url_or_skip() -> str:
    """The Redis the tests use; skipped locally when absent, a failure in CI."""
    url = os.environ.get("REDIS_TEST_URL", DEFAULT_REDIS_URL)
    if not redis_answers(url):
        if os.environ.get("CI"):
            pytest.fail(f"Redis does not answer at {url}; .ci/run should have started it.")
        pytest.skip(f"Redis does not answer at {url}")
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def group_members(layer: object, graphs_only: bool = False) -> dict[str, int]:
    """Every group the layer still has members in, with their counts, read from the layer itself.

    In-memory: the layer's own table. Redis pub/sub: this process's table and the server's live
    subscriptions under the layer's prefix. Redis core: the group sorted sets on the server.
    With `graphs_only`, only graphs' groups: a process with open connections is also a member
    of the revocations group (executions.revocation) until the last one closes.
    """
    members = await _group_members(layer)
    if graphs_only:
        return {group: count for group, count in members.items() if "graph." in group}
    return members


async def _group_members(layer: object) -> dict[str, int]:
    from channels.layers import InMemoryChannelLayer
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    if isinstance(layer, InMemoryChannelLayer):
        return {group: len(members) for group, members in layer.groups.items() if members}
    if isinstance(layer, RedisPubSubChannelLayer):
        loop_layer = layer._get_layer()
        members = {g: len(m) for g, m in loop_layer.groups.items() if m}
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(loop_layer._shards[0].host["address"])
        try:
            channels = await client.pubsub_channels(f"{loop_layer.prefix}__group__*")
            counts = await client.pubsub_numsub(*channels) if channels else []
        finally:
            await client.aclose()
        for channel, count in counts:
            if count:
                members[f"server:{channel.decode()}"] = int(count)
        return members
    if isinstance(layer, RedisChannelLayer):
        connection = layer.connection(0)
        keys = await connection.keys(f"{layer.prefix}:group:*")
        counts = {key.decode(): await connection.zcard(key) for key in keys}
        return {key: count for key, count in counts.items() if count}
    raise TypeError(f"unknown layer {type(layer).__name__}")


def http_scope(
    path: str,
    headers: dict[str, str],
    method: str = "POST",
    client: str = "127.0.0.1",
) -> dict[str, Any]:
    """An HTTP scope as daphne and uvicorn hand it to the application."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": (client, 5000),
        "server": ("testserver", 80),
    }


async def close_frame(client: Any, seconds: float = 5.0) -> Any:
    """Read a `websockets` client until the server closes; the close frame it sent."""
    import asyncio

    from websockets.exceptions import ConnectionClosed

    try:
        async with asyncio.timeout(seconds):
            while True:
                await client.recv()
    except ConnectionClosed as closed:
        received = closed.rcvd
    if received is None:
        pytest.fail("the server sent no close frame")
    return received
