"""Server-Sent Events in a real browser: Chromium's EventSource, logged in by the login form.

The fixtures (site, server, browser, tab) and the login are the dashboard browser tests'; like
them, this is skipped without Chromium or Playwright locally and fails in CI.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from executions.schemas import ExecutionResult, execution_event_frame
from tests import test_dashboard_browser as dashboard
from tests.servers import DaphneServer
from tests.test_dashboard_browser import GRAPH, STEP_TIMEOUT_MS, Tab, log_in, publish, result

# The dashboard tests' fixtures, here by the same names.
site = dashboard.site
log_dir = dashboard.log_dir
server = dashboard.server
browser = dashboard.browser
tab = dashboard.tab

pytestmark = pytest.mark.timeout(120)

OPEN_EVENT_SOURCE = """(url) => {
    window.__events = [];
    window.__errors = 0;
    const source = new EventSource(url);
    source.addEventListener("execution_event", (event) => {
        window.__events.push({type: event.type, id: event.lastEventId, data: event.data});
    });
    source.onerror = () => { window.__errors += 1; };
    window.__source = source;
}"""


async def test_event_source_receives_each_result_with_its_id_and_frame(
    tab: Tab, server: DaphneServer
) -> None:
    page = tab.page
    await log_in(page, server)  # the session cookie authenticates the stream
    published = [result("a", "QUEUED"), result("a", "COMPLETED"), result("b", "RUNNING")]
    await publish(server, *published[:1])

    # since=0: the first result comes from the history, the others live.
    await page.evaluate(OPEN_EVENT_SOURCE, f"/api/graphs/{quote(GRAPH)}/events?since=0")
    await page.wait_for_function("window.__events.length === 1", timeout=STEP_TIMEOUT_MS)
    await publish(server, *published[1:])
    await page.wait_for_function("window.__events.length === 3", timeout=STEP_TIMEOUT_MS)

    events: list[dict[str, Any]] = await page.evaluate("window.__events")
    await page.evaluate("window.__source.close()")
    frames = [execution_event_frame(ExecutionResult.model_validate(item)) for item in published]
    assert events == [
        {"type": "execution_event", "id": str(seq), "data": frame}
        for seq, frame in enumerate(frames, start=1)
    ]
    assert json.loads(events[2]["data"])["data"]["node_exec_id"] == "exec-1-b"
    assert await page.evaluate("window.__errors") == 0
    assert tab.errors == []
