"""``manage.py watch_executions``: a live tail of a graph, against a real daphne process.

The command runs as an operator would run it, a subprocess of its own; this process publishes
through the server's ingest endpoint. Every wait is bounded.
"""

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.servers import MANAGE_PY, REPO_ROOT, DaphneServer, Site, post_executions, prepare_site

RUN = uuid.uuid4().hex[:8]
TIMEOUT = 30.0
STATUSES = ["QUEUED", "RUNNING", "COMPLETED", "FAILED", "INCOMPLETE"]


@dataclass(frozen=True)
class Setup:
    site: Site
    server: DaphneServer
    token: str
    graph_id: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    site = prepare_site(tmp_path_factory.mktemp("watch-site"))
    token = site.token_for("alice")
    graph_id = f"watch-{RUN}"
    site.register_graph(graph_id, owner="alice")
    with DaphneServer(site.env, tmp_path_factory.mktemp("watch-logs")) as server:
        yield Setup(site, server, token, graph_id)


def execution(graph_id: str, index: int) -> dict[str, Any]:
    return {
        "graph_id": graph_id,
        "graph_version": 1,
        "graph_exec_id": f"exec-{RUN}-{index // 5}",
        "node_exec_id": f"node-exec-{index}",
        "node_id": f"node-{index}",
        "block_id": "block-ai-text",
        "status": STATUSES[index % len(STATUSES)],
        "input_data": {},
        "output_data": {},
        "add_time": "2025-01-02T03:04:05Z",
        "queue_time": "2025-01-02T03:04:05Z",
        "start_time": "2025-01-02T03:04:06Z",
        "end_time": "2025-01-02T03:04:07.500000Z",
    }


async def publish(setup: Setup, indices: range) -> None:
    body = [execution(setup.graph_id, index) for index in indices]
    assert await post_executions(setup.server, body, seconds=TIMEOUT) == (
        202,
        {"accepted": len(body)},
    )


@contextlib.asynccontextmanager
async def watching(setup: Setup, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``manage.py watch_executions ARGS`` running; killed afterwards if still running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(MANAGE_PY),
        "watch_executions",
        *args,
        cwd=REPO_ROOT,
        env=setup.site.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(TIMEOUT):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def wait_for_line(process: asyncio.subprocess.Process, text: str) -> None:
    """Read the command's stderr until a line containing `text`."""
    assert process.stderr is not None
    seen = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, f"stderr ended before {text!r}: {''.join(seen)}"
            seen.append(line)
            if text in line:
                return


async def test_prints_one_line_per_event_with_node_and_status_then_stops(setup: Setup) -> None:
    """History first (--since 0), then live events; --max-events ends it cleanly."""
    await publish(setup, range(3))
    async with watching(
        setup,
        setup.graph_id,
        "--since",
        "0",
        "--url",
        setup.server.ws_url,
        "--user",
        "alice",
        "--max-events",
        "6",
    ) as process:
        await publish(setup, range(3, 6))
        code, stdout, stderr = await finish(process)

    assert code == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 6, stdout
    for index, line in enumerate(lines):
        assert f"node-{index} " in line
        assert STATUSES[index % len(STATUSES)] in line
        assert line.startswith(f"#{index + 1} ")
    assert "1.50 s" in lines[2]  # COMPLETED: its duration
    assert "\x1b[" not in stdout  # no colour codes when stdout is not a terminal
    assert "Watching graph" in stderr


async def test_force_color_colours_the_status(setup: Setup) -> None:
    async with watching(
        setup,
        setup.graph_id,
        "--since",
        "2",
        "--url",
        setup.server.ws_url,
        "--token",
        setup.token,
        "--max-events",
        "1",
        "--force-color",
    ) as process:
        code, stdout, stderr = await finish(process)

    assert code == 0, stderr
    assert "node-2" in stdout
    assert "\x1b[1;32mCOMPLETED" in stdout  # bold green


async def test_a_refused_token_exits_with_the_reason(setup: Setup) -> None:
    async with watching(
        setup, setup.graph_id, "--url", setup.server.ws_url, "--token", "forged"
    ) as process:
        code, _, stderr = await finish(process)

    assert code == 1
    assert "Authentication failed: Invalid token" in stderr
    assert "Traceback" not in stderr


async def test_ctrl_c_exits_cleanly(setup: Setup) -> None:
    async with watching(
        setup, setup.graph_id, "--url", setup.server.ws_url, "--token", setup.token
    ) as process:
        await wait_for_line(process, "Watching graph")
        process.send_signal(signal.SIGINT)
        code, _, stderr = await finish(process)

    assert code == 0, stderr
    assert "Stopped." in stderr
    assert "Traceback" not in stderr


async def test_the_token_travels_in_the_authorization_header(setup: Setup) -> None:
    """A stand-in server records the handshake, then refuses it as the app would."""
    handshakes: list[tuple[str, str | None]] = []

    async def handler(ws: ServerConnection) -> None:
        handshakes.append((ws.request.path, ws.request.headers.get("Authorization")))
        refusal = {"method": "error", "data": None, "success": False, "channel": None}
        await ws.send(json.dumps({**refusal, "error": "Invalid token"}))
        await ws.close(4001, "Invalid token")

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        async with watching(setup, setup.graph_id, "--url", url, "--token", setup.token) as process:
            code, _, stderr = await finish(process)

    assert code == 1, stderr
    assert "Authentication failed: Invalid token" in stderr
    assert handshakes == [("/ws", f"Bearer {setup.token}")]
