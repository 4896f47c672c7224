"""The dashboard where the WebSocket cannot open: Server-Sent Events instead, in Chromium.

daphne serves the demo project behind tests/refusing_proxy_asgi.py, which refuses every
WebSocket handshake while a flag file exists, as a proxy that blocks upgrades would. The page
then follows the graph shown with an EventSource on its ``events`` URL, says so, and goes back
to the WebSocket once the flag is gone; results published all along are shown once each.

The fixtures (site, browser, tab) and the login are the dashboard browser tests'; like them,
this is skipped without Chromium or Playwright locally and fails in CI. A script added to the
page before its own records every WebSocket and EventSource it creates, and every notice it
shows, without changing what they do (the switching test also slows its WebSocket's messages
down, so that both connections bring the same results for a while).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_dashboard_browser as dashboard
from tests.servers import DaphneServer, Site
from tests.test_dashboard_browser import (
    RECONNECT_TIMEOUT_MS,
    RUN,
    Tab,
    log_in,
    node_exec_ids,
    publish,
    publish_while_down,
    rendered,
)

with contextlib.suppress(ImportError):  # without it, the fixtures skip the tests
    from playwright.async_api import Locator, Page, expect

# The dashboard tests' fixtures, here by the same names.
site = dashboard.site
log_dir = dashboard.log_dir
server = dashboard.server
browser = dashboard.browser
tab = dashboard.tab

pytestmark = pytest.mark.timeout(180)

SWITCH_GRAPH = f"fallback-{RUN}-switch"
GAP_GRAPH = f"fallback-{RUN}-gap"
SESSION_GRAPH = f"fallback-{RUN}-session"
WEBSOCKET_GRAPH = f"fallback-{RUN}-websocket"
REFUSAL_VARIABLE = "EXECUTIONS_TEST_REFUSE_WEBSOCKETS"
SKIP_BACKOFF = 16_000  # ms: longer than the dashboard's longest backoff (BACKOFF_MAX_MS)
MAX_RESULTS_DURING_SWITCH = 1_000
WEBSOCKET_LATENCY_MS = 300

RECORD_CONNECTIONS = """(() => {
    const NativeSocket = window.WebSocket;
    const NativeSource = window.EventSource;
    window.__sockets = [];
    window.__sources = [];
    window.__notices = [];
    window.WebSocket = class extends NativeSocket {
        constructor(url, protocols) {
            super(url, protocols);
            const record = { url: String(url), opened: false, received: 0 };
            window.__sockets.push(record);
            this.addEventListener("open", () => { record.opened = true; });
            this.addEventListener("message", (event) => {
                const frame = String(event.data);
                if (frame.startsWith('{"method":"execution_event"')) record.received += 1;
            });
        }
    };
    window.EventSource = class extends NativeSource {
        constructor(url, init) {
            super(url, init);
            this.received = 0;
            this.addEventListener("execution_event", () => { this.received += 1; });
            window.__sources.push(this);
        }
    };
    document.addEventListener("DOMContentLoaded", () => {
        const notice = document.getElementById("panel-notice");
        if (!notice) return;
        new MutationObserver(() => {
            if (notice.textContent) window.__notices.push(notice.textContent);
        }).observe(notice, { childList: true, characterData: true, subtree: true });
    });
})();"""

# Added in the switching test: every message of a WebSocket reaches the page's listeners this
# much later (in order), as over a slow path, so that results keep arriving over the stream
# while the socket's subscription is answered, and the socket's replay repeats some of them.
WEBSOCKET_LATENCY = """(() => {
    const NativeSocket = window.WebSocket;
    window.WebSocket = class extends NativeSocket {
        addEventListener(type, listener, options) {
            if (type !== "message") return super.addEventListener(type, listener, options);
            const later = (event) => setTimeout(() => listener.call(this, event), LATENCY_MS);
            return super.addEventListener(type, later, options);
        }
    };
})();""".replace("LATENCY_MS", str(WEBSOCKET_LATENCY_MS))


class RefusingDaphne(DaphneServer):
    """daphne serving tests.refusing_proxy_asgi instead of the project's application."""

    def command(self) -> list[str]:
        command = super().command()
        assert command[-1] == "project.asgi:application"
        return [*command[:-1], "tests.refusing_proxy_asgi:application"]


@pytest.fixture(scope="module")
def graphs(site: Site) -> None:
    site.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        "from executions.models import Graph\n"
        f"alice = get_user_model().objects.get(username={dashboard.USERNAME!r})\n"
        + "".join(
            f"Graph.objects.create(pk={graph!r}, owner=alice)\n"
            for graph in (SWITCH_GRAPH, GAP_GRAPH, SESSION_GRAPH, WEBSOCKET_GRAPH)
        ),
    )


@pytest.fixture
def refusal(tmp_path: Path) -> Path:
    """The flag file: WebSocket handshakes are refused while it exists."""
    flag = tmp_path / "refuse-websockets"
    flag.touch()
    return flag


@pytest.fixture
def blocked_server(
    site: Site, graphs: None, log_dir: Path, refusal: Path
) -> Iterator[DaphneServer]:
    env = {**site.env, REFUSAL_VARIABLE: str(refusal)}
    with RefusingDaphne(env, log_dir, "no-websocket") as daphne:
        yield daphne


# --- helpers ------------------------------------------------------------------------------


def event(graph: str, node: str, status: str, exec_id: str = "run-1") -> dict[str, Any]:
    started = status in {"RUNNING", "COMPLETED", "FAILED"}
    finished = status in {"COMPLETED", "FAILED"}
    return {
        "graph_id": graph,
        "graph_version": 1,
        "graph_exec_id": f"{exec_id}-{RUN}",
        "node_exec_id": f"{exec_id}-{node}",
        "node_id": node,
        "block_id": "http-request",
        "status": status,
        "input_data": {"node": node},
        "output_data": {"done": [node]} if finished else {},
        "add_time": "2026-01-01T12:00:00Z",
        "queue_time": "2026-01-01T12:00:00Z",
        "start_time": "2026-01-01T12:00:01Z" if started else None,
        "end_time": "2026-01-01T12:00:02Z" if finished else None,
    }


async def open_graph(page: Page, server: DaphneServer, graph: str) -> Locator:
    """Log in with the recorder in place, open the graph; its section on the page."""
    await page.add_init_script(RECORD_CONNECTIONS)
    await log_in(page, server)
    await page.get_by_role("link", name=graph, exact=True).click()
    return page.locator(f'.graph-executions[data-graph-id="{graph}"]')


async def sockets_opened(page: Page) -> list[bool]:
    """Whether each WebSocket the page created opened, in order."""
    sockets: list[dict[str, Any]] = await page.evaluate("window.__sockets")
    return [socket["opened"] for socket in sockets]


async def source_urls(page: Page) -> list[str]:
    urls: list[str] = await page.evaluate("window.__sources.map((source) => source.url)")
    return urls


def subscriptions_gauge(server: DaphneServer) -> float:
    """executions_subscriptions of the server process: its WebSocket and SSE subscriptions."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^executions_subscriptions (\S+)$", text, re.MULTILINE)
    assert match, "no executions_subscriptions in /metrics"
    return float(match.group(1))


async def wait_for_gauge(server: DaphneServer, expected: float, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while (value := await asyncio.to_thread(subscriptions_gauge, server)) != expected:
        assert time.monotonic() < deadline, f"executions_subscriptions is {value}, not {expected}"
        await asyncio.sleep(0.1)


async def publish_through_the_switch(page: Page, server: DaphneServer, graph: str) -> int:
    """Publish results back to back while the page goes back to the WebSocket; how many.

    The page's next WebSocket attempt is brought forward (the clock skips its backoff) so that
    it falls in the middle of the stream of results: some arrive over both connections.
    """
    done = asyncio.Event()
    published = 0

    async def publisher() -> None:
        nonlocal published
        while not done.is_set() and published < MAX_RESULTS_DURING_SWITCH:
            await publish(server, event(graph, f"during-{published}", "COMPLETED"))
            published += 1

    task = asyncio.create_task(publisher())
    try:
        await asyncio.sleep(0.3)  # a few over the stream first
        await page.clock.fast_forward(SKIP_BACKOFF)
        await expect(page.locator("#connection")).to_have_attribute(
            "data-transport", "websocket", timeout=RECONNECT_TIMEOUT_MS
        )
        await asyncio.sleep(0.5)  # and a few over the WebSocket
    finally:
        done.set()
        await task
    return published


# --- the tests ----------------------------------------------------------------------------


async def test_without_a_websocket_the_graph_is_followed_over_sse_and_back_without_loss(
    blocked_server: DaphneServer, refusal: Path, tab: Tab
) -> None:
    page = tab.page
    await page.clock.install()  # time flows as usual, and can be skipped ahead below
    await page.add_init_script(WEBSOCKET_LATENCY)
    graph = SWITCH_GRAPH
    # Published before the page opens: over SSE it follows the graph from now on.
    await publish(
        blocked_server, event(graph, "early-a", "COMPLETED"), event(graph, "early-b", "QUEUED")
    )

    section = await open_graph(page, blocked_server, graph)
    connection = page.locator("#connection")
    status = connection.locator(".connection-text")
    await expect(connection).to_have_attribute("data-transport", "sse")
    await expect(connection).to_have_attribute("data-state", "connected")
    await expect(status).to_have_text("Connected (Server-Sent Events)")
    await expect(section).to_have_attribute("data-subscription", "active")
    await expect(section).to_have_attribute("data-last-seq", "2")
    opened = await sockets_opened(page)
    assert len(opened) >= 2, "the stream opened before two WebSocket attempts failed"
    assert not any(opened)
    assert await source_urls(page) == [
        f"{blocked_server.http_url}/api/graphs/{graph}/events?since=2"
    ]

    # Results published now arrive over the stream, rendered as WebSocket frames are.
    await publish(blocked_server, event(graph, "a", "QUEUED"), event(graph, "a", "RUNNING"))
    await publish(blocked_server, event(graph, "a", "COMPLETED"), event(graph, "b", "RUNNING"))
    await expect(section.locator("li.node .node-name")).to_have_text(["a", "b"])
    await expect(section.locator("li.node .status-text")).to_have_text(["Completed", "Running"])
    await expect(section.locator("article.execution .execution-head .status-text")).to_have_text(
        "Running"
    )
    await expect(section).to_have_attribute("data-applied", "4")
    await expect(section).to_have_attribute("data-last-seq", "6")
    await expect(section.locator("li.node").first.locator(".node-meta")).to_contain_text("#5")
    assert await page.get_by_text("early-a").count() == 0  # before the page: not shown

    # The proxy lets upgrades through again. Results keep coming while the page, on its
    # backoff, opens the WebSocket, resumes with `since` and closes the stream.
    await asyncio.to_thread(refusal.unlink)
    during = await publish_through_the_switch(page, blocked_server, graph)
    await expect(status).to_have_text("Connected (WebSocket)")
    for index in range(3):
        await publish(blocked_server, event(graph, f"after-{index}", "COMPLETED"))

    total = 4 + during + 3
    await expect(section).to_have_attribute("data-applied", str(total))
    await expect(section).to_have_attribute("data-last-seq", str(2 + total))
    await page.wait_for_function(
        "window.__sources.length === 1 && window.__sources[0].readyState === EventSource.CLOSED"
    )
    await wait_for_gauge(blocked_server, 1.0)  # the socket's subscription; the stream is gone
    assert (await sockets_opened(page))[-1] is True
    state = await rendered(page, graph)
    ids = node_exec_ids(state)
    assert ids == [
        "run-1-a",
        "run-1-b",
        *(f"run-1-during-{index}" for index in range(during)),
        *(f"run-1-after-{index}" for index in range(3)),
    ]
    assert state["applied"] == total
    # Both connections brought some of the same results: the page showed each once.
    received = await page.evaluate(
        "[window.__sources.reduce((n, s) => n + s.received, 0),"
        " window.__sockets.reduce((n, s) => n + s.received, 0)]"
    )
    print(f"\n{total} results shown; event frames received over SSE and WebSocket: {received}")
    assert sum(received) > total
    await expect(page.locator("#panel-notice")).to_be_hidden()
    assert await page.evaluate("window.__notices") == []  # no gap, no reset, no error, ever
    assert tab.errors == []


async def test_the_stream_resumes_after_a_restart_and_reports_what_retention_removed(
    site: Site, blocked_server: DaphneServer, log_dir: Path, tab: Tab
) -> None:
    page = tab.page
    graph = GAP_GRAPH
    section = await open_graph(page, blocked_server, graph)
    connection = page.locator("#connection")
    await expect(connection).to_have_attribute("data-transport", "sse")
    await publish(blocked_server, event(graph, "a", "COMPLETED"), event(graph, "b", "RUNNING"))
    await expect(section).to_have_attribute("data-applied", "2")

    # The server dies; results are published meanwhile, and retention keeps only the last 3.
    assert blocked_server.process is not None
    blocked_server.process.kill()
    blocked_server.process.wait(timeout=10)
    await expect(connection).to_have_attribute("data-state", "reconnecting")
    await expect(connection).to_have_attribute("data-transport", "")
    publish_while_down(
        site,
        event(graph, "b", "COMPLETED"),  # 3, removed by retention
        *(event(graph, f"c{index}", "COMPLETED") for index in range(5)),  # 4 to 8
    )
    site.manage("prune_execution_history", "--max-events", "3")

    with RefusingDaphne(
        blocked_server.env, log_dir, "no-websocket-restarted", port=blocked_server.port
    ) as restarted:
        await expect(connection).to_have_attribute(
            "data-transport", "sse", timeout=RECONNECT_TIMEOUT_MS
        )
        await expect(page.locator("#panel-notice")).to_have_text(
            "Some updates from while you were away are no longer kept on the server "
            "(history now starts at #6)."
        )
        await expect(section).to_have_attribute("data-applied", "5")
        await expect(section).to_have_attribute("data-last-seq", "8")
        await publish(restarted, event(graph, "d", "COMPLETED"))
        await expect(section).to_have_attribute("data-applied", "6")
        state = await rendered(page, graph)
        assert state["lastSeq"] == 9
        assert [node[1:] for node in state["executions"][0]["nodes"]] == [
            ["a", "Completed"],
            ["b", "Running"],  # its COMPLETED was removed before the page could see it
            ["c2", "Completed"],
            ["c3", "Completed"],
            ["c4", "Completed"],
            ["d", "Completed"],
        ]
        assert not any(await sockets_opened(page))
        restarted.assert_running()
    assert tab.errors == []


async def test_a_session_ended_while_streaming_stops_every_connection(
    blocked_server: DaphneServer, tab: Tab
) -> None:
    page = tab.page
    await page.clock.install()  # time flows as usual, and can be skipped ahead below
    section = await open_graph(page, blocked_server, SESSION_GRAPH)
    connection = page.locator("#connection")
    await expect(connection).to_have_attribute("data-transport", "sse")
    await publish(blocked_server, event(SESSION_GRAPH, "a", "COMPLETED"))
    await expect(section).to_have_attribute("data-applied", "1")

    # Logged out by another request of the same session; the page stays.
    logout_status = await page.evaluate(
        """async () => {
            const form = document.querySelector("form.account");
            const answer = await fetch(form.action, {
                method: "POST", body: new FormData(form), redirect: "manual",
            });
            return answer.type === "opaqueredirect" ? 302 : answer.status;
        }"""
    )
    assert logout_status == 302

    # The stream's error event is shown as a WebSocket error frame would be; the reconnect
    # is refused (401) and the page stops, as after a 4001 close.
    await page.wait_for_function(
        "window.__notices.includes('The server said: Session ended: log in again')"
    )
    await expect(connection).to_have_attribute("data-state", "offline")
    await expect(connection.locator(".connection-text")).to_have_text("Offline (signed out)")
    await expect(page.locator("#panel-notice")).to_have_text(
        "Your session has ended. Reload the page and log in again."
    )
    await expect(section).to_have_attribute("data-subscription", "none")
    attempts = await page.evaluate("[window.__sockets.length, window.__sources.length]")
    await page.clock.fast_forward("02:00")  # every backoff there could be has run out
    await page.wait_for_timeout(1000)
    assert await page.evaluate("[window.__sockets.length, window.__sources.length]") == attempts
    assert await page.evaluate(
        "window.__sources.every((source) => source.readyState === EventSource.CLOSED)"
    )
    assert tab.errors == []


async def test_where_the_websocket_opens_the_page_uses_it_alone(
    server: DaphneServer, graphs: None, tab: Tab
) -> None:
    page = tab.page
    section = await open_graph(page, server, WEBSOCKET_GRAPH)
    connection = page.locator("#connection")
    await expect(connection).to_have_attribute("data-transport", "websocket")
    await expect(connection.locator(".connection-text")).to_have_text("Connected (WebSocket)")
    await expect(section).to_have_attribute("data-subscription", "active")
    await publish(
        server, event(WEBSOCKET_GRAPH, "a", "RUNNING"), event(WEBSOCKET_GRAPH, "a", "COMPLETED")
    )
    await expect(section.locator("li.node .status-text")).to_have_text(["Completed"])
    await expect(section).to_have_attribute("data-applied", "2")
    assert await sockets_opened(page) == [True]
    assert await source_urls(page) == []
    await wait_for_gauge(server, 1.0)
    assert tab.errors == []
