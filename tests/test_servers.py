"""Server adapters: engaged only for tested versions, and a plain ASGI fallback that works.

The fallback runs the real servers with ``EXECUTIONS_SERVER_ADAPTERS = False``
(tests/plain_asgi_settings.py): the app must then serve daphne and uvicorn through nothing
but the ASGI send, with its own message-size check.
"""

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from executions import servers
from executions.schemas import execution_event_frame
from executions.servers import daphne, uvicorn
from executions.servers.base import within_tested_versions
from tests.conftest import make_result
from tests.servers import DaphneServer, Site, UvicornServer, post_executions, prepare_site
from tests.support import close_frame

GRAPH = f"plain-{uuid.uuid4().hex[:10]}"
TIMEOUT = 5.0


def test_the_installed_servers_are_the_versions_their_adapters_are_tested_with() -> None:
    assert daphne.supported()
    assert uvicorn.supported()


def test_a_version_outside_the_tested_range_turns_the_adapter_off_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="executions.servers"):
        assert not within_tested_versions({"daphne": ((99,), (100,))})
    assert "daphne" in caplog.text
    assert "plain ASGI send" in caplog.text


def test_a_server_that_is_not_installed_is_not_tested() -> None:
    assert not within_tested_versions({"no-such-server-distribution": ((1,), (2,))})


async def test_without_adapters_a_connection_gets_the_plain_asgi_send(settings: Any) -> None:
    settings.EXECUTIONS_SERVER_ADAPTERS = False

    async def send(message: dict[str, Any]) -> None:
        pass

    hooks = servers.connection_hooks(send)

    assert (hooks.send, hooks.pressure, hooks.frames) == (send, None, None)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    prepared = prepare_site(tmp_path_factory.mktemp("plain-asgi-site"))
    prepared.env["DJANGO_SETTINGS_MODULE"] = "tests.plain_asgi_settings"
    prepared.token_for("alice")
    prepared.register_graph(GRAPH, "alice")
    return prepared


@pytest.fixture(params=[DaphneServer, UvicornServer], ids=["daphne", "uvicorn"])
def server(request: pytest.FixtureRequest, site: Site, tmp_path: Path) -> Iterator[DaphneServer]:
    with request.param(site.env, tmp_path, name="plain-asgi") as running:
        yield running


async def test_the_plain_asgi_fallback_delivers_results_byte_for_byte(
    site: Site, server: DaphneServer
) -> None:
    token = site.token_for("alice")
    results = [make_result(graph_id=GRAPH, node_exec_id=f"plain-{n}") for n in range(20)]
    async with connect(f"{server.ws_url}?token={token}") as client:
        await client.send(json.dumps({"method": "subscribe", "data": {"graph_id": GRAPH}}))
        async with asyncio.timeout(TIMEOUT):
            assert json.loads(await client.recv())["success"] is True

        body = [json.loads(result.model_dump_json()) for result in results]
        assert await post_executions(server, body) == (202, {"accepted": len(results)})

        async with asyncio.timeout(TIMEOUT):
            frames = [await client.recv() for _ in results]
    assert frames == [execution_event_frame(result) for result in results]


async def test_the_plain_asgi_fallback_closes_an_oversized_message_with_4009(
    site: Site, server: DaphneServer
) -> None:
    token = site.token_for("alice")
    async with connect(f"{server.ws_url}?token={token}", max_size=None) as client:
        await client.send(json.dumps({"method": "heartbeat", "data": "x" * 70_000}))
        received = await close_frame(client)
    assert received.code == 4009
