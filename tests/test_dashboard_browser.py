"""The dashboard in a real browser: headless Chromium (Playwright) against daphne subprocesses.

A user logs in through the login form, opens a graph and watches results published through the
ingest endpoint appear in order. Then the server is killed: the page says it is reconnecting;
results are published while it is down; the server comes back on the same port and the page
shows what it missed, nothing twice. Screenshots go to test-artifacts/.

Debian's ``chromium`` is the browser (Playwright's own download does not work here). Without
it, or without Playwright, the tests are skipped locally and fail in CI (``CI`` set), whose
``.ci/run`` installs it. The server runs with DEBUG off: the page's script and stylesheet come
from the app itself, not from /static/.
"""

from __future__ import annotations  # the annotations name Playwright's types, maybe absent

import importlib.util
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import REPO_ROOT, DaphneServer, Site, post_executions, prepare_site

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "dashboard.png"
PHONE_SCREENSHOT = ARTIFACTS / "dashboard-phone.png"

RUN = uuid.uuid4().hex[:8]
GRAPH = f"browser-{RUN}"
GRAPH_LABEL = "Weather report"
SNAPSHOT_GRAPH = f"browser-{RUN}-snapshot"
DEMO_GRAPH = f"browser-{RUN}-demo"
USERNAME = "alice"
PASSWORD = f"browser-test-{RUN}-password"

STEP_TIMEOUT_MS = 10_000  # anything the page does by itself
RECONNECT_TIMEOUT_MS = 30_000  # backoff: a few attempts, each at most a few seconds apart
XSS_NODE = '<img src=x onerror="window.__xss=1">'


def _browser_or_skip() -> None:
    missing = []
    if async_playwright is None:
        missing.append("the playwright package (pip install playwright)")
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(
                message + " in CI: the dev extras provide playwright, .ci/run installs Chromium."
            )
        pytest.skip(message)


# --- the site, the server, the browser ----------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    _browser_or_skip()
    site = prepare_site(tmp_path_factory.mktemp("dashboard-site"))
    # One process for the users and graphs (each manage.py run costs a Django start-up).
    site.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        "from executions.models import Graph\n"
        "users = get_user_model().objects\n"
        f"alice = users.create_user({USERNAME!r}, password={PASSWORD!r})\n"
        "bob = users.create_user('bob', password='bob-password-0123')\n"
        f"Graph.objects.create(pk={GRAPH!r}, owner=alice, name={GRAPH_LABEL!r})\n"
        f"Graph.objects.create(pk={SNAPSHOT_GRAPH!r}, owner=alice)\n"
        f"Graph.objects.create(pk={DEMO_GRAPH!r}, owner=alice)\n"
        f"Graph.objects.create(pk='browser-{RUN}-bob', owner=bob)\n",
    )
    return site


@pytest.fixture
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dashboard-logs")


@pytest.fixture
def server(site: Site, log_dir: Path) -> Iterator[DaphneServer]:
    # DEBUG stays off; the demo runner's button is opted into, as a production site would.
    env = {**site.env, "EXECUTIONS_DEMO_ENABLED": "1"}
    with DaphneServer(env, log_dir, "dashboard") as daphne:
        yield daphne


@dataclass
class Tab:
    page: Page
    errors: list[str]  # uncaught exceptions in the page


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert async_playwright is not None
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True, timeout=30_000
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.set_default_navigation_timeout(STEP_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield Tab(page, errors)
    finally:
        await context.close()


async def log_in(page: Page, server: DaphneServer) -> None:
    """From the dashboard's login link, through the login form, back to the dashboard."""
    await page.goto(f"{server.http_url}/")
    await page.get_by_role("link", name="Log in").click()
    await page.get_by_label("Username").fill(USERNAME)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Your graphs")).to_be_visible()
    assert page.url == f"{server.http_url}/"


# --- events -------------------------------------------------------------------------------


def result(
    node: str, status: str, exec_id: str = "exec-1", node_id: str | None = None, graph: str = GRAPH
) -> dict[str, Any]:
    """One node's result; nodes run 1.5 s, from 12:00:00 + their letter's offset."""
    offset = ord(node[-1]) - ord("a")
    started = status in {"RUNNING", "COMPLETED", "FAILED"}
    finished = status in {"COMPLETED", "FAILED"}
    return {
        "graph_id": graph,
        "graph_version": 1,
        "graph_exec_id": f"{exec_id}-{RUN}",
        "node_exec_id": f"{exec_id}-{node}",
        "node_id": node_id or node,
        "block_id": "http-request",
        "status": status,
        "input_data": {"city": f"Zürich {node}", "html": "<b>not bold</b>"},
        "output_data": {"temperature": [20 + offset]} if finished else {},
        "add_time": f"2026-01-01T12:00:0{offset}Z",
        "queue_time": f"2026-01-01T12:00:0{offset}Z",
        "start_time": f"2026-01-01T12:00:0{offset}.500000Z" if started else None,
        "end_time": f"2026-01-01T12:00:0{offset + 2}Z" if finished else None,
    }


async def publish(server: DaphneServer, *results: dict[str, Any]) -> None:
    assert await post_executions(server, list(results)) == (202, {"accepted": len(results)})


def publish_while_down(site: Site, *results: dict[str, Any]) -> None:
    """Store and publish from another process, as a task worker would (nobody is listening)."""
    site.manage(
        "shell",
        "-c",
        "import json, sys\n"
        "from executions.events import send_execution_results_sync\n"
        "send_execution_results_sync(json.load(sys.stdin))\n",
        stdin=json.dumps(list(results)),
    )


async def rendered(page: Page, graph: str) -> dict[str, Any]:
    """What the page shows for a graph: executions (newest first), their nodes, counters."""
    state: dict[str, Any] = await page.evaluate(
        """(graph) => {
            const section = Array.from(document.querySelectorAll(".graph-executions"))
                .find((s) => s.dataset.graphId === graph);
            if (!section) return null;
            return {
                applied: Number(section.dataset.applied),
                lastSeq: Number(section.dataset.lastSeq),
                executions: Array.from(section.querySelectorAll("article.execution"), (a) => ({
                    id: a.dataset.graphExecId,
                    status: a.querySelector(".execution-head .status-text").textContent,
                    nodes: Array.from(a.querySelectorAll("li.node"), (li) => [
                        li.dataset.nodeExecId,
                        li.querySelector(".node-name").textContent,
                        li.querySelector(".status-text").textContent,
                    ]),
                })),
            };
        }""",
        graph,
    )
    return state


def node_exec_ids(state: dict[str, Any]) -> list[str]:
    return [node[0] for execution in state["executions"] for node in execution["nodes"]]


# --- the tests ----------------------------------------------------------------------------


async def test_live_updates_survive_a_server_restart_without_loss_or_repeats(
    site: Site, server: DaphneServer, log_dir: Path, tab: Tab
) -> None:
    page = tab.page
    started = time.monotonic()
    await log_in(page, server)
    assert await page.get_by_role("link", name=re.compile("bob")).count() == 0

    # Open the graph: one WebSocket, subscribed.
    await page.get_by_role("link", name=GRAPH_LABEL).click()
    connection = page.locator("#connection")
    section = page.locator(f'.graph-executions[data-graph-id="{GRAPH}"]')
    await expect(connection).to_have_attribute("data-state", "connected")
    await expect(connection).to_have_attribute("data-transport", "websocket")
    await expect(connection.locator(".connection-text")).to_have_text("Connected (WebSocket)")
    await expect(section).to_have_attribute("data-subscription", "active")
    await expect(page.get_by_role("heading", name=f"Executions of {GRAPH_LABEL}")).to_be_focused()
    assert page.url.endswith(f"/?graph={GRAPH}")

    # Live: results published through the ingest endpoint appear in order.
    await publish(
        server,
        result("node-a", "QUEUED"),
        result("node-a", "RUNNING"),
        result("node-a", "COMPLETED"),
        result("node-b", "QUEUED"),
    )
    await publish(server, result("node-b", "RUNNING"))
    first = page.locator(f'article.execution[data-graph-exec-id="exec-1-{RUN}"]')
    await expect(first.locator("li.node .node-name")).to_have_text(["node-a", "node-b"])
    await expect(first.locator("li.node .status-text")).to_have_text(["Completed", "Running"])
    await expect(first.locator(".execution-head .status-text")).to_have_text("Running")
    await expect(first.locator("li.node").first.locator(".node-duration")).to_have_text("1.5 s")
    await expect(section).to_have_attribute("data-applied", "5")
    # Inputs and outputs on demand, shown as text.
    node_b = first.locator('li.node[data-node-exec-id="exec-1-node-b"]')
    await node_b.get_by_text("Inputs and outputs").click()
    await expect(node_b.locator(".node-inputs")).to_contain_text('"html": "<b>not bold</b>"')

    # The server dies: the page notices and keeps trying.
    assert server.process is not None
    server.process.kill()
    server.process.wait(timeout=10)
    await expect(connection).to_have_attribute(
        "data-state", re.compile("reconnecting|offline"), timeout=STEP_TIMEOUT_MS
    )
    await expect(connection).to_have_text(re.compile("Reconnecting|Offline"))

    # Results published while it is away (stored; nobody receives them live).
    publish_while_down(
        site,
        result("node-b", "FAILED"),
        result("node-c", "QUEUED"),
        result("node-c", "RUNNING"),
        result("node-c", "COMPLETED"),
        result("node-d", "COMPLETED", exec_id="exec-2", node_id=XSS_NODE),
    )

    # Back on the same port: the page reconnects, resumes with `since`, shows what it missed.
    # (Its WebSocket attempts failed while the server was away, so it may have followed the
    # graph over Server-Sent Events for a while: it ends up on the WebSocket all the same.)
    with DaphneServer(site.env, log_dir, "dashboard-restarted", port=server.port) as restarted:
        await expect(connection).to_have_attribute(
            "data-transport", "websocket", timeout=RECONNECT_TIMEOUT_MS
        )
        await expect(connection).to_have_attribute("data-state", "connected")
        await expect(connection.locator(".connection-text")).to_have_text("Connected (WebSocket)")
        await expect(section).to_have_attribute("data-subscription", "active")
        await expect(section).to_have_attribute("data-applied", "10")
        await expect(first.locator("li.node .status-text")).to_have_text(
            ["Completed", "Failed", "Completed"]
        )
        await expect(node_b.locator("details")).to_have_attribute("open", "")  # still open

        # And the live stream goes on after the resume.
        await publish(restarted, result("node-e", "COMPLETED", exec_id="exec-2"))
        await expect(section).to_have_attribute("data-applied", "11")

        state = await rendered(page, GRAPH)
        assert state["applied"] == 11
        assert state["lastSeq"] == 11
        assert state["executions"] == [  # newest first
            {
                "id": f"exec-2-{RUN}",
                "status": "Completed",
                "nodes": [
                    ["exec-2-node-d", XSS_NODE, "Completed"],
                    ["exec-2-node-e", "node-e", "Completed"],
                ],
            },
            {
                "id": f"exec-1-{RUN}",
                "status": "Failed",
                "nodes": [
                    ["exec-1-node-a", "node-a", "Completed"],
                    ["exec-1-node-b", "node-b", "Failed"],
                    ["exec-1-node-c", "node-c", "Completed"],
                ],
            },
        ]
        ids = node_exec_ids(state)
        assert len(ids) == len(set(ids)), f"a node shown twice: {ids}"
        assert await page.evaluate("window.__xss") is None  # the HTML stayed text

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
        print(f"\nscreenshot: {SCREENSHOT}")

        # Phone width: nothing wider than the screen.
        await page.set_viewport_size({"width": 390, "height": 844})
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
        await page.screenshot(path=str(PHONE_SCREENSHOT), full_page=True)
        print(f"phone screenshot: {PHONE_SCREENSHOT}")
        restarted.assert_running()

    assert tab.errors == []
    print(f"browser scenario took {time.monotonic() - started:.1f} s")


async def test_first_open_shows_the_snapshot_and_the_keyboard_works(
    site: Site, server: DaphneServer, tab: Tab
) -> None:
    """A graph opened mid-run shows the latest state of each node at once (snapshot: true)."""
    await publish(
        server,
        result("node-a", "QUEUED", graph=SNAPSHOT_GRAPH),
        result("node-a", "RUNNING", graph=SNAPSHOT_GRAPH),
        result("node-b", "QUEUED", graph=SNAPSHOT_GRAPH),
        result("node-a", "COMPLETED", graph=SNAPSHOT_GRAPH),
    )
    page = tab.page
    await log_in(page, server)

    link = page.get_by_role("link", name=SNAPSHOT_GRAPH)
    await link.focus()
    await page.keyboard.press("Enter")

    section = page.locator(f'.graph-executions[data-graph-id="{SNAPSHOT_GRAPH}"]')
    await expect(section).to_have_attribute("data-subscription", "active")
    await expect(section.locator("li.node .status-text")).to_have_text(["Completed", "Queued"])
    await expect(section).to_have_attribute("data-applied", "2")  # the latest of each node
    await expect(link).to_have_attribute("aria-current", "true")

    await publish(server, result("node-b", "RUNNING", graph=SNAPSHOT_GRAPH))
    await expect(section.locator("li.node .status-text")).to_have_text(["Completed", "Running"])
    assert tab.errors == []


async def test_demo_button(site: Site, server: DaphneServer, tab: Tab) -> None:
    """The button posts with the CSRF token; the demo runner's nodes then appear live."""
    page = tab.page
    await log_in(page, server)
    await page.get_by_role("link", name=DEMO_GRAPH).click()
    section = page.locator(f'.graph-executions[data-graph-id="{DEMO_GRAPH}"]')
    await expect(section).to_have_attribute("data-subscription", "active")

    await page.get_by_role("button", name="Run demo graph").click()

    status = page.locator("#demo-status")
    if importlib.util.find_spec("executions.demo") is None:
        # Not written yet: the endpoint (past CSRF and ownership) says so.
        await expect(status).to_have_text(re.compile("demo runner is not available"))
        return
    await expect(status).to_have_text(re.compile("Demo run started"))
    nodes = section.locator("li.node")
    await expect(nodes.first).to_be_visible(timeout=STEP_TIMEOUT_MS)
    await expect(section.locator("article.execution .execution-head .status-text")).to_have_text(
        re.compile("Completed|Failed"), timeout=60_000
    )
    assert tab.errors == []
