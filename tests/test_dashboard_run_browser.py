"""One run followed alone on the dashboard ("Follow this run"), in Chromium against daphne.

The page subscribes to the run with AutoGPT's ``subscribe_graph_execution`` (a snapshot first,
``since`` after a reconnect) and shows its node events and its own graph events (status,
duration, statistics, outputs), never another run's; "Back to all runs" unsubscribes and the
graph's view resumes where it was. Where the WebSocket cannot open (tests/refusing_proxy_asgi.py
refuses it), the run's own Server-Sent Events URL is followed instead, and the page goes back to
the WebSocket without losing or repeating an event.

The fixtures, the login and the refusing server are the other dashboard browser tests'; like
them, these are skipped without Chromium or Playwright locally and fail in CI. A script added to
the page before its own records the frames each WebSocket sends, the run frames each WebSocket
and EventSource receives, and every notice shown, without changing what they do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests import test_dashboard_browser as dashboard
from tests import test_dashboard_fallback_browser as fallback
from tests.servers import DaphneServer, Site
from tests.test_dashboard_browser import (
    ARTIFACTS,
    RECONNECT_TIMEOUT_MS,
    RUN,
    Tab,
    log_in,
    publish,
)
from tests.test_dashboard_fallback_browser import (
    REFUSAL_VARIABLE,
    SKIP_BACKOFF,
    WEBSOCKET_LATENCY,
    RefusingDaphne,
    source_urls,
    wait_for_gauge,
)

with contextlib.suppress(ImportError):  # without it, the fixtures skip the tests
    from playwright.async_api import Locator, Page, expect

# The dashboard tests' fixtures, here by the same names.
site = dashboard.site
log_dir = dashboard.log_dir
server = dashboard.server
browser = dashboard.browser
tab = dashboard.tab
refusal = fallback.refusal

pytestmark = pytest.mark.timeout(180)

SOCKET_GRAPH = f"runs-{RUN}-socket"
AGAIN_GRAPH = f"runs-{RUN}-again"
STREAM_GRAPH = f"runs-{RUN}-stream"
MISSING_GRAPH = f"runs-{RUN}-missing"
NODES = ("fetch", "summarize", "publish")  # in this order in a timeline (their add_time)
MAX_PAIRS_DURING_SWITCH = 500
SCREENSHOT = ARTIFACTS / "dashboard-run.png"

RECORD = """(() => {
    const NativeSocket = window.WebSocket;
    const NativeSource = window.EventSource;
    const RUN_FRAME = /^\\{"method":"(node|graph)_execution_event"/;
    window.__sockets = [];
    window.__sources = [];
    window.__sent = [];
    window.__notices = [];
    window.WebSocket = class extends NativeSocket {
        constructor(url, protocols) {
            super(url, protocols);
            const record = { url: String(url), opened: false, received: 0, socket: this };
            window.__sockets.push(record);
            this.addEventListener("open", () => { record.opened = true; });
            this.addEventListener("message", (event) => {
                if (RUN_FRAME.test(String(event.data))) record.received += 1;
            });
        }
        send(data) {
            const frame = JSON.parse(data);
            if (frame.method !== "heartbeat") window.__sent.push(frame);
            return super.send(data);
        }
    };
    window.EventSource = class extends NativeSource {
        constructor(url, init) {
            super(url, init);
            this.received = 0;
            for (const name of ["node_execution_event", "graph_execution_event"]) {
                this.addEventListener(name, () => { this.received += 1; });
            }
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


@pytest.fixture(scope="module")
def alice(site: Site) -> str:
    """Creates this module's graphs; the primary key of their owner, as events carry it."""
    completed = site.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        "from executions.models import Graph\n"
        f"alice = get_user_model().objects.get(username={dashboard.USERNAME!r})\n"
        + "".join(
            f"Graph.objects.create(pk={graph!r}, owner=alice)\n"
            for graph in (SOCKET_GRAPH, AGAIN_GRAPH, STREAM_GRAPH, MISSING_GRAPH)
        )
        + "print(alice.pk)\n",
    )
    return completed.stdout.split()[-1]


@pytest.fixture
def blocked_server(site: Site, alice: str, log_dir: Path, refusal: Path) -> Iterator[DaphneServer]:
    env = {**site.env, REFUSAL_VARIABLE: str(refusal)}
    with RefusingDaphne(env, log_dir, "runs-no-websocket") as daphne:
        yield daphne


# --- events -------------------------------------------------------------------------------


def node_event(
    user_id: str, graph: str, run: str, node: str, status: str, add_time: str | None = None
) -> dict[str, Any]:
    """AutoGPT's NodeExecutionEvent as the ingest endpoint takes it; nodes run 1.5 s."""
    offset = NODES.index(node) if node in NODES else len(NODES)
    started = status in {"RUNNING", "COMPLETED", "FAILED"}
    finished = status in {"COMPLETED", "FAILED"}
    return {
        "user_id": user_id,
        "graph_id": graph,
        "graph_version": 2,
        "graph_exec_id": run,
        "node_exec_id": f"{run}:{node}",
        "node_id": node,
        "block_id": "llm-call",
        "status": status,
        "input_data": {"prompt": f"{node}?"},
        "output_data": {"answer": [f"{node} done"]} if finished else {},
        "add_time": add_time or f"2026-01-01T12:00:0{offset}Z",
        "queue_time": f"2026-01-01T12:00:0{offset}Z",
        "start_time": f"2026-01-01T12:00:0{offset}.500000Z" if started else None,
        "end_time": f"2026-01-01T12:00:0{offset + 2}Z" if finished else None,
        "event_type": "node_execution_update",
    }


def run_event(
    user_id: str,
    graph: str,
    run: str,
    status: str,
    outputs: dict[str, list[Any]] | None = None,
    stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """AutoGPT's GraphExecutionEvent; a run that has ended took 1 min 30 s."""
    ended = status in {"COMPLETED", "FAILED", "TERMINATED"}
    return {
        "id": run,
        "user_id": user_id,
        "graph_id": graph,
        "graph_version": 2,
        "inputs": {"topic": run},
        "status": status,
        "started_at": "2026-01-01T12:00:00Z",
        "ended_at": "2026-01-01T12:01:30Z" if ended else "2026-01-01T12:00:00Z",
        "stats": stats,
        "outputs": outputs or {},
        "event_type": "graph_execution_update",
    }


# --- what the page shows and sends --------------------------------------------------------


def graph_view(page: Page, graph: str) -> Locator:
    return page.locator(f'.graph-executions[data-graph-id="{graph}"]')


def run_view(page: Page, run: str) -> Locator:
    return page.locator(f'.run-view[data-graph-exec-id="{run}"]')


async def open_graph(page: Page, server: DaphneServer, graph: str) -> Locator:
    """Log in with the recorder in place, open the graph; its section on the page."""
    await page.add_init_script(RECORD)
    await log_in(page, server)
    await page.get_by_role("link", name=graph, exact=True).click()
    return graph_view(page, graph)


async def sent(page: Page) -> list[dict[str, Any]]:
    """Every frame but heartbeats the page's WebSockets sent, in order."""
    frames: list[dict[str, Any]] = await page.evaluate("window.__sent")
    return frames


async def node_rows(view: Locator) -> list[list[str]]:
    """[node_exec_id, node name, status] of each node the view shows, in order."""
    rows: list[list[str]] = await view.evaluate(
        """(view) => Array.from(view.querySelectorAll("li.node"), (li) => [
            li.dataset.nodeExecId,
            li.querySelector(".node-name").textContent,
            li.querySelector(".status-text").textContent,
        ])"""
    )
    return rows


async def run_facts(view: Locator) -> dict[str, str]:
    """The run's facts beside its status: label -> value."""
    facts: dict[str, str] = await view.locator(".run-facts").evaluate(
        """(dl) => Object.fromEntries(Array.from(dl.querySelectorAll("dt"),
            (dt) => [dt.textContent, dt.nextElementSibling.textContent]))"""
    )
    return facts


async def run_frames_received(page: Page) -> list[int]:
    """Run frames received over [the EventSources, the WebSockets]."""
    received: list[int] = await page.evaluate(
        "[window.__sources.reduce((n, s) => n + s.received, 0),"
        " window.__sockets.reduce((n, s) => n + s.received, 0)]"
    )
    return received


# --- the tests ----------------------------------------------------------------------------


async def test_a_run_followed_over_the_websocket_shows_its_events_alone_and_resumes_with_since(
    server: DaphneServer, alice: str, tab: Tab
) -> None:
    page = tab.page
    await page.clock.install()  # time flows as usual, and can be paused below
    graph = SOCKET_GRAPH
    owls, bats = f"owls-{RUN}", f"bats-{RUN}"
    section = await open_graph(page, server, graph)
    connection = page.locator("#connection")
    await expect(section).to_have_attribute("data-subscription", "active")
    await expect(connection).to_have_attribute("data-transport", "websocket")

    # Two runs of the graph: the graph's view shows the node events of both, and nothing of
    # their graph events (the original protocol carries none).
    await publish(
        server,
        node_event(alice, graph, owls, "fetch", "COMPLETED"),  # 1
        node_event(alice, graph, owls, "summarize", "RUNNING"),  # 2
        run_event(alice, graph, owls, "RUNNING"),  # 3
        node_event(alice, graph, bats, "fetch", "RUNNING"),  # 4
        run_event(alice, graph, bats, "RUNNING"),  # 5
    )
    await expect(section.locator("article.execution")).to_have_count(2)
    await expect(section).to_have_attribute("data-applied", "3")
    owls_article = section.locator(f'article.execution[data-graph-exec-id="{owls}"]')
    await expect(owls_article.locator(".run-details")).to_have_count(0)

    # Follow the owls: its own subscription, from a snapshot, in place of the graph's.
    await owls_article.get_by_role("button", name="Follow this run").click()
    view = run_view(page, owls)
    await expect(view).to_have_attribute("data-subscription", "active")
    await expect(section).to_be_hidden()
    await expect(page.get_by_role("heading", name=f"Run {owls} of {graph}")).to_be_focused()
    assert page.url.endswith(f"/?graph={graph}&run={owls}")
    await expect(view).to_have_attribute("data-applied", "3")  # 2 nodes' latest, its own latest
    await expect(view).to_have_attribute("data-last-seq", "3")
    assert await node_rows(view) == [
        [f"{owls}:fetch", "fetch", "Completed"],
        [f"{owls}:summarize", "summarize", "Running"],
    ]
    await expect(view.locator(".execution-head .status-text")).to_have_text("Running")
    await expect(view.locator(".run-outputs")).to_have_text("No outputs yet.")
    assert await sent(page) == [
        {"method": "subscribe", "data": {"graph_id": graph, "snapshot": True}},
        {"method": "unsubscribe", "data": {"graph_id": graph}},
        {"method": "subscribe_graph_execution", "data": {"graph_exec_id": owls, "snapshot": True}},
    ]
    await wait_for_gauge(server, 1.0)  # the run's subscription alone

    # Live: the owls' events only, its end from its own graph event.
    await publish(
        server,
        node_event(alice, graph, bats, "fetch", "COMPLETED"),  # 6
        node_event(alice, graph, owls, "summarize", "COMPLETED"),  # 7
        run_event(alice, graph, bats, "FAILED", outputs={"summary": ["Bats sleep by day."]}),  # 8
        run_event(
            alice,
            graph,
            owls,
            "COMPLETED",
            outputs={"summary": ["Owls hoot at night."]},
            stats={"node_exec_count": 2, "node_error_count": 0, "cost": 7},
        ),  # 9
    )
    await expect(view).to_have_attribute("data-applied", "5")
    await expect(view).to_have_attribute("data-last-seq", "9")
    await expect(view.locator(".execution-head .status-text")).to_have_text("Completed")
    await expect(view.locator(".execution-summary")).to_have_text(
        "2 nodes \u00b7 2 completed \u00b7 took 1 min 30 s"
    )
    await expect(view.locator(".run-output-name")).to_have_text(["summary"])
    await expect(view.locator(".run-output")).to_have_text(["Owls hoot at night."])
    facts = await run_facts(view)
    assert {key: facts[key] for key in ("Nodes run", "Node errors", "Cost")} == {
        "Nodes run": "2",
        "Node errors": "0",
        "Cost": "7",
    }
    assert {"Started", "Ended"} <= facts.keys()
    assert [row[2] for row in await node_rows(view)] == ["Completed", "Completed"]
    await expect(view.locator(f'[data-graph-exec-id="{bats}"]')).to_have_count(0)
    await expect(view).not_to_contain_text("Bats")

    # The connection drops; events are published before the page reconnects (its timers are
    # held meanwhile); it resumes the run with `since` and shows each missed event once.
    await page.clock.pause_at(await page.evaluate("Date.now()") + 1000)
    await page.evaluate("window.__sockets.at(-1).socket.close()")
    await expect(connection).to_have_attribute("data-state", "reconnecting")
    await expect(view).to_have_attribute("data-subscription", "none")
    await publish(
        server,
        node_event(alice, graph, owls, "publish", "COMPLETED"),  # 10
        node_event(alice, graph, bats, "summarize", "RUNNING"),  # 11
        run_event(
            alice,
            graph,
            owls,
            "COMPLETED",
            outputs={"summary": ["Owls hoot at night."], "posted": [{"url": "/owls"}]},
            stats={"node_exec_count": 3, "node_error_count": 0, "cost": 9},
        ),  # 12
    )
    await page.clock.resume()
    await expect(connection).to_have_attribute(
        "data-transport", "websocket", timeout=RECONNECT_TIMEOUT_MS
    )
    await expect(view).to_have_attribute("data-subscription", "active")
    await expect(view).to_have_attribute("data-applied", "7")
    await expect(view).to_have_attribute("data-last-seq", "12")
    assert (await sent(page))[3:] == [
        {"method": "subscribe_graph_execution", "data": {"graph_exec_id": owls, "since": 9}}
    ]
    assert await node_rows(view) == [
        [f"{owls}:fetch", "fetch", "Completed"],
        [f"{owls}:summarize", "summarize", "Completed"],
        [f"{owls}:publish", "publish", "Completed"],
    ]
    await expect(view.locator(".run-output-name")).to_have_text(["summary", "posted"])
    await expect(view.locator(".run-output").nth(1)).to_contain_text('"url": "/owls"')
    assert (await run_facts(view))["Nodes run"] == "3"
    await view.locator(".run-data summary").click()
    await expect(view.locator(".run-inputs")).to_contain_text(f'"topic": "{owls}"')
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    print(f"\nscreenshot: {SCREENSHOT}")
    await page.set_viewport_size({"width": 390, "height": 844})
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    await page.set_viewport_size({"width": 1100, "height": 900})

    # Back to all runs: the run's subscription ends, the graph's resumes after what it had,
    # and its view shows what both runs did meanwhile (node events), each once.
    await view.get_by_role("button", name="Back to all runs").click()
    await expect(view).to_have_count(0)
    await expect(section).to_be_visible()
    await expect(section).to_have_attribute("data-subscription", "active")
    await expect(owls_article.get_by_role("button", name="Follow this run")).to_be_focused()
    assert page.url.endswith(f"/?graph={graph}")
    assert (await sent(page))[4:] == [
        {"method": "unsubscribe", "data": {"graph_exec_id": owls}},
        {"method": "subscribe", "data": {"graph_id": graph, "since": 4}},
    ]
    await expect(section).to_have_attribute("data-applied", "7")  # 3, then 6, 7, 10 and 11
    await expect(section).to_have_attribute("data-last-seq", "11")
    assert [row[1:] for row in await node_rows(section)] == [
        ["fetch", "Completed"],  # the bats, newest first
        ["summarize", "Running"],
        ["fetch", "Completed"],  # the owls
        ["summarize", "Completed"],
        ["publish", "Completed"],
    ]
    await wait_for_gauge(server, 1.0)  # the graph's subscription alone

    # The browser's Back button follows the run again: a new subscription, from a snapshot.
    await page.go_back()
    view = run_view(page, owls)
    await expect(view).to_have_attribute("data-subscription", "active")
    await expect(view).to_have_attribute("data-applied", "4")  # 3 nodes' latest, its own latest
    await expect(view.locator(".execution-head .status-text")).to_have_text("Completed")
    assert [row[0] for row in await node_rows(view)] == [f"{owls}:{node}" for node in NODES]
    assert (await sent(page))[6:] == [
        {"method": "unsubscribe", "data": {"graph_id": graph}},
        {"method": "subscribe_graph_execution", "data": {"graph_exec_id": owls, "snapshot": True}},
    ]
    assert await page.evaluate("window.__notices") == []
    assert tab.errors == []


async def test_a_run_followed_again_at_once_shows_its_whole_state(
    server: DaphneServer, alice: str, tab: Tab
) -> None:
    """Back and Follow in one go while a frame of the first subscription is still on its way:
    that frame (a later number than some of the snapshot's) must not hide the snapshot."""
    page = tab.page
    await page.add_init_script(WEBSOCKET_LATENCY)
    graph = AGAIN_GRAPH
    hawks = f"hawks-{RUN}"
    section = await open_graph(page, server, graph)
    await expect(section).to_have_attribute("data-subscription", "active")
    await publish(
        server,
        node_event(alice, graph, hawks, "fetch", "COMPLETED"),
        run_event(alice, graph, hawks, "RUNNING"),
        node_event(alice, graph, hawks, "summarize", "RUNNING"),
    )
    article = section.locator(f'article.execution[data-graph-exec-id="{hawks}"]')
    await article.get_by_role("button", name="Follow this run").click()
    view = run_view(page, hawks)
    await expect(view).to_have_attribute("data-applied", "3")
    first = int(await view.get_attribute("data-last-seq") or 0)

    await publish(server, node_event(alice, graph, hawks, "summarize", "COMPLETED"))
    await page.evaluate(
        """(run) => {
            document.querySelector(".run-view .run-back").click();
            Array.from(document.querySelectorAll("article.execution"))
                .find((a) => a.dataset.graphExecId === run)
                .querySelector(".follow-run").click();
        }""",
        hawks,
    )
    view = run_view(page, hawks)
    await expect(view).to_have_attribute("data-subscription", "active")
    await expect(view).to_have_attribute("data-last-seq", str(first + 1))
    await expect(view).to_have_attribute("data-applied", "3")  # the snapshot: all of it
    assert [row[1:] for row in await node_rows(view)] == [
        ["fetch", "Completed"],
        ["summarize", "Completed"],
    ]
    await expect(view.locator(".execution-head .status-text")).to_have_text("Running")
    assert tab.errors == []


async def test_a_run_the_server_does_not_know_is_reported(
    server: DaphneServer, alice: str, tab: Tab
) -> None:
    page = tab.page
    ghost = f"ghost-{RUN}"
    await page.add_init_script(RECORD)
    await log_in(page, server)
    await page.goto(f"{server.http_url}/?graph={MISSING_GRAPH}&run={ghost}")

    view = run_view(page, ghost)
    await expect(page.locator("#panel-notice")).to_have_text(
        "The server said: Graph execution not found."
    )
    await expect(view).to_have_attribute("data-subscription", "none")
    await expect(
        page.get_by_role("heading", name=f"Run {ghost} of {MISSING_GRAPH}")
    ).to_be_visible()
    assert await sent(page) == [
        {"method": "subscribe_graph_execution", "data": {"graph_exec_id": ghost, "snapshot": True}}
    ]

    await view.get_by_role("button", name="Back to all runs").click()
    await expect(graph_view(page, MISSING_GRAPH)).to_have_attribute("data-subscription", "active")
    await expect(page.locator("#panel-notice")).to_be_hidden()
    assert tab.errors == []


async def test_without_a_websocket_the_run_is_followed_over_its_own_stream_and_back(
    blocked_server: DaphneServer, refusal: Path, alice: str, tab: Tab
) -> None:
    page = tab.page
    await page.clock.install()  # time flows as usual, and can be skipped ahead below
    await page.add_init_script(WEBSOCKET_LATENCY)
    graph = STREAM_GRAPH
    owls, bats = f"owls/{RUN} a", f"bats/{RUN} b"  # a "/" and a space in the stream's URL
    section = await open_graph(page, blocked_server, graph)
    connection = page.locator("#connection")
    await expect(connection).to_have_attribute("data-transport", "sse")
    await expect(section).to_have_attribute("data-subscription", "active")

    await publish(
        blocked_server,
        node_event(alice, graph, owls, "fetch", "COMPLETED"),  # 1
        run_event(alice, graph, owls, "RUNNING"),  # 2
        node_event(alice, graph, bats, "fetch", "RUNNING"),  # 3
        run_event(alice, graph, bats, "RUNNING"),  # 4
    )
    await expect(section.locator("article.execution")).to_have_count(2)
    await expect(section).to_have_attribute("data-applied", "2")

    # Follow the owls: its own stream, from its start (a stream has no snapshot).
    owls_article = section.locator(f'article.execution[data-graph-exec-id="{owls}"]')
    await owls_article.get_by_role("button", name="Follow this run").click()
    view = run_view(page, owls)
    await expect(view).to_have_attribute("data-subscription", "active")
    await expect(connection).to_have_attribute("data-transport", "sse")
    assert (await source_urls(page))[1:] == [
        f"{blocked_server.http_url}/api/executions/{quote(owls, safe='')}/events?since=0"
    ]
    await page.wait_for_function("window.__sources[0].readyState === EventSource.CLOSED")
    await expect(view).to_have_attribute("data-applied", "2")
    await expect(view.locator(".execution-head .status-text")).to_have_text("Running")

    await publish(
        blocked_server,
        node_event(alice, graph, bats, "fetch", "COMPLETED"),  # 5
        node_event(alice, graph, owls, "summarize", "COMPLETED"),  # 6
        run_event(alice, graph, bats, "FAILED", outputs={"summary": ["Bats sleep by day."]}),  # 7
        run_event(
            alice, graph, owls, "COMPLETED", outputs={"summary": ["Owls hoot at night."]}
        ),  # 8
    )
    await expect(view).to_have_attribute("data-applied", "4")
    await expect(view).to_have_attribute("data-last-seq", "8")
    await expect(view.locator(".execution-head .status-text")).to_have_text("Completed")
    await expect(view.locator(".execution-summary")).to_contain_text("took 1 min 30 s")
    await expect(view.locator(".run-output")).to_have_text(["Owls hoot at night."])
    assert await node_rows(view) == [
        [f"{owls}:fetch", "fetch", "Completed"],
        [f"{owls}:summarize", "summarize", "Completed"],
    ]
    await expect(view).not_to_contain_text("Bats")
    assert await sent(page) == []

    # Upgrades go through again. Events of both runs keep coming while the page, on its
    # backoff, opens the WebSocket, resumes the run with `since` and closes the stream.
    await asyncio.to_thread(refusal.unlink)
    pairs = 0
    done = asyncio.Event()

    async def publisher() -> None:
        nonlocal pairs
        while not done.is_set() and pairs < MAX_PAIRS_DURING_SWITCH:
            later = "2026-01-01T12:05:00Z"  # after the others: shown in the order they come
            await publish(
                blocked_server,
                node_event(alice, graph, owls, f"during-{pairs}", "COMPLETED", add_time=later),
                node_event(alice, graph, bats, f"during-{pairs}", "COMPLETED", add_time=later),
            )
            pairs += 1

    task = asyncio.create_task(publisher())
    try:
        await asyncio.sleep(0.3)  # a few over the stream first
        await page.clock.fast_forward(SKIP_BACKOFF)
        await expect(connection).to_have_attribute(
            "data-transport", "websocket", timeout=RECONNECT_TIMEOUT_MS
        )
        await asyncio.sleep(0.5)  # and a few over the WebSocket
    finally:
        done.set()
        await task

    total = 4 + pairs
    await expect(view).to_have_attribute("data-applied", str(total))
    await expect(view).to_have_attribute("data-last-seq", str(8 + 2 * pairs - 1))
    await page.wait_for_function(
        "window.__sources.length === 2"
        " && window.__sources.every((source) => source.readyState === EventSource.CLOSED)"
    )
    frames = await sent(page)
    assert len(frames) == 1, frames  # the run alone, resumed: no snapshot, no graph
    assert frames[0]["method"] == "subscribe_graph_execution"
    assert frames[0]["data"].keys() == {"graph_exec_id", "since"}
    assert frames[0]["data"]["graph_exec_id"] == owls
    assert frames[0]["data"]["since"] >= 8
    rows = await node_rows(view)
    assert [row[0] for row in rows] == [
        f"{owls}:fetch",
        f"{owls}:summarize",
        *(f"{owls}:during-{index}" for index in range(pairs)),
    ]
    # Both transports brought some of the same events: each was shown once.
    received = await run_frames_received(page)
    print(f"\n{total} run events shown; run frames received over SSE and WebSocket: {received}")
    assert sum(received) > total
    await wait_for_gauge(blocked_server, 1.0)  # the socket's run subscription; no stream

    # Back to all runs, on the WebSocket now: the graph resumes after what it had (#3).
    await view.get_by_role("button", name="Back to all runs").click()
    await expect(section).to_have_attribute("data-subscription", "active")
    assert (await sent(page))[1:] == [
        {"method": "unsubscribe", "data": {"graph_exec_id": owls}},
        {"method": "subscribe", "data": {"graph_id": graph, "since": 3}},
    ]
    await expect(section).to_have_attribute("data-applied", str(2 + 2 + 2 * pairs))
    await expect(section).to_have_attribute("data-last-seq", str(8 + 2 * pairs))
    ids = [row[0] for row in await node_rows(section)]
    assert len(ids) == len(set(ids)) == 3 + 2 * pairs  # the owls' 2 and the bats' 1, then pairs
    assert await page.evaluate("window.__notices") == []
    assert tab.errors == []


async def test_a_stream_the_server_refuses_is_retried_a_bounded_number_of_times(
    blocked_server: DaphneServer, refusal: Path, alice: str, tab: Tab
) -> None:
    page = tab.page
    await page.clock.install()
    ghost = f"ghost/{RUN}"
    await page.add_init_script(RECORD)
    await log_in(page, blocked_server)
    await page.goto(f"{blocked_server.http_url}/?graph={MISSING_GRAPH}&run={quote(ghost, safe='')}")
    view = run_view(page, ghost)
    notice = page.locator("#panel-notice")

    # Over Server-Sent Events (the WebSocket cannot open), the run's stream answers 404: the
    # page tries a few times, then says so and stops.
    await page.clock.fast_forward(SKIP_BACKOFF)
    await page.clock.fast_forward(SKIP_BACKOFF)
    await expect(notice).to_have_text(
        "The server refused to stream this run; live updates resume when the WebSocket connects."
    )
    urls = await source_urls(page)
    assert (
        urls
        == [f"{blocked_server.http_url}/api/executions/{quote(ghost, safe='')}/events?since=0"] * 3
    )
    await page.clock.fast_forward("02:00")
    await page.wait_for_timeout(500)
    assert len(await source_urls(page)) == 3
    await expect(view).to_have_attribute("data-subscription", "none")

    # Once the WebSocket opens, the server's own words.
    await asyncio.to_thread(refusal.unlink)
    await page.clock.fast_forward(SKIP_BACKOFF)
    await expect(notice).to_have_text(
        "The server said: Graph execution not found.", timeout=RECONNECT_TIMEOUT_MS
    )
    assert await sent(page) == [
        {"method": "subscribe_graph_execution", "data": {"graph_exec_id": ghost, "snapshot": True}}
    ]
    assert (await page.evaluate("window.__notices"))[0] == (
        "The server refused to stream this run; live updates resume when the WebSocket connects."
    )
    assert tab.errors == []
