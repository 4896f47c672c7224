"""The dashboard at ``/``, its assets, its login page and its "Run demo graph" endpoint.

Django's test client against the real URLconf and middleware (CSRF included). The page's
behaviour in a browser is tested in test_dashboard_browser.py.
"""

import asyncio
import re
import sys
import types
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client
from django.urls import resolve

from executions import views
from executions.models import Graph

STATIC_DIR = Path(views.__file__).resolve().parent / "static" / "executions"
TRICKY_GRAPH = 'alice/<script>alert("x")</script> & co'


class Links(HTMLParser):
    """Every URL-bearing attribute of a page, and the text of its <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"href", "src", "action", "srcset", "data"} and value is not None:
                self.urls.append((tag, value))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def page_links(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


@pytest.fixture
def people(transactional_db: None, settings: Any) -> dict[str, Any]:
    """Alice (not staff) owns two graphs, one with an id full of HTML; Bob owns one."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast
    users = get_user_model().objects
    alice = users.create_user(username="alice", password="alice-password-123")
    bob = users.create_user(username="bob", password="bob-password-123")
    Graph.objects.create(pk="alice-graph", owner=alice, name="Alice's pipeline")
    Graph.objects.create(pk=TRICKY_GRAPH, owner=alice)
    Graph.objects.create(pk="bob-graph", owner=bob, name="Bob's secret pipeline")
    return {"alice": alice, "bob": bob}


# --- the page -----------------------------------------------------------------------------


def test_anonymous_visitor_gets_a_login_link_and_the_connection_details(
    transactional_db: None,
) -> None:
    response = Client().get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert ("a", "/login/?next=/") in page_links(html).urls
    assert "ws://testserver/ws" in html  # how programs connect
    assert 'id="dashboard"' not in html
    assert "graph-link" not in html


def test_user_sees_only_their_own_graphs(people: dict[str, Any]) -> None:
    client = Client()
    client.force_login(people["alice"])

    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert list(response.context["graphs"]) == list(Graph.objects.filter(owner=people["alice"]))
    assert 'data-graph-id="alice-graph"' in html
    assert "Alice&#x27;s pipeline" in html
    assert "bob-graph" not in html
    # The CSRF token is 64 random letters and digits: about one page in 4,000 would
    # hold "Bob" in it by chance. Nothing else of the page may.
    assert "Bob" not in re.sub(r'name="csrfmiddlewaretoken" value="\w+"', "", html)
    assert "ws://testserver/ws" in html


def test_graph_ids_are_escaped_in_the_page(people: dict[str, Any]) -> None:
    client = Client()
    client.force_login(people["alice"])

    html = client.get("/").content.decode()

    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in html
    assert "?graph=alice%2F%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E%20%26%20co" in html


class GraphLinks(HTMLParser):
    """The attributes of each graph link of a page, by graph id."""

    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        graph_id = attributes.get("data-graph-id")
        if tag == "a" and graph_id is not None:
            self.links[graph_id] = attributes


def test_graph_links_carry_the_urls_the_page_follows_them_by_without_a_websocket(
    people: dict[str, Any],
) -> None:
    """Each link holds its graph's SSE stream and history URLs, reversed by the server, unless
    no browser could request them: a "." or ".." segment, a line break."""
    unreachable = ["a/../b", "./c", "line\nbreak"]
    for graph_id in unreachable:
        Graph.objects.create(pk=graph_id, owner=people["alice"])
    client = Client()
    client.force_login(people["alice"])

    response = client.get("/")

    assert response.status_code == 200
    parser = GraphLinks()
    parser.feed(response.content.decode())
    for graph_id in ("alice-graph", TRICKY_GRAPH):
        link = parser.links[graph_id]
        events_url, history_url = link["data-events-url"], link["data-history-url"]
        assert events_url is not None
        assert history_url is not None
        assert events_url.startswith("/api/graphs/")
        assert events_url.endswith("/events")
        assert not set("<> #?") & set(events_url), events_url  # percent-encoded
        assert resolve(unquote(events_url)).kwargs == {"graph_id": graph_id}
        history = client.get(history_url, {"limit": 1})
        assert history.status_code == 200
        assert history.json()["graph_id"] == graph_id
    for graph_id in unreachable:
        link = parser.links[graph_id]
        assert "data-events-url" not in link
        assert "data-history-url" not in link


class DashboardRoot(HTMLParser):
    """The attributes of the page's #dashboard element."""

    def __init__(self) -> None:
        super().__init__()
        self.attributes: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if dict(attrs).get("id") == "dashboard":
            self.attributes = dict(attrs)


def test_the_page_holds_the_url_it_follows_one_execution_by_without_a_websocket(
    people: dict[str, Any],
) -> None:
    """The execution's SSE URL with a placeholder, which dashboard.js replaces with the id as
    encodeURIComponent writes it; whatever the id, that URL reaches the execution's stream."""
    client = Client()
    client.force_login(people["alice"])
    parser = DashboardRoot()
    parser.feed(client.get("/").content.decode())

    placeholder = views.EXECUTION_ID_PLACEHOLDER
    template = parser.attributes["data-execution-events-url"]
    assert template == f"/api/executions/{placeholder}/events"
    script = (STATIC_DIR / "dashboard.js").read_text()
    assert f'const EXECUTION_ID_PLACEHOLDER = "{placeholder}";' in script
    for graph_exec_id in ("run-1", "a/b c", "../up", 'x#?&"<>%25', "ünï|graph_exec#7"):
        url = template.replace(placeholder, quote(graph_exec_id, safe="!'()*~"))
        assert resolve(unquote(url)).kwargs == {"graph_exec_id": graph_exec_id}


@pytest.mark.parametrize("logged_in", [False, True])
def test_page_loads_nothing_from_other_sites(people: dict[str, Any], logged_in: bool) -> None:
    client = Client()
    if logged_in:
        client.force_login(people["alice"])

    links = page_links(client.get("/").content.decode())

    assert links.urls, "the page links nothing at all?"
    for tag, url in links.urls:
        assert not re.match(r"^([a-z][a-z0-9+.-]*:)?//", url, re.IGNORECASE), (tag, url)
    assert links.inline_scripts == []  # all behaviour in dashboard.js: a CSP can say 'self'
    scripts = [url for tag, url in links.urls if tag == "script"]
    styles = [url for tag, url in links.urls if tag == "link"]
    assert [url.split("?")[0] for url in scripts] == ["/dashboard/assets/dashboard.js"]
    assert [url.split("?")[0] for url in styles] == ["/dashboard/assets/dashboard.css"]


# --- the assets, served with DEBUG off ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")],
)
def test_assets_are_served_by_the_app_itself(
    transactional_db: None, settings: Any, name: str, content_type: str
) -> None:
    settings.DEBUG = False
    client = Client()
    html = client.get("/").content.decode()
    url = next(url for _, url in page_links(html).urls if f"/{name}?v=" in url)

    response = client.get(url)

    assert response.status_code == 200
    assert response["Content-Type"].startswith(content_type)
    assert response.content == (STATIC_DIR / name).read_bytes()
    assert "immutable" in response["Cache-Control"]
    again = client.get(url, headers={"If-None-Match": response["ETag"]})
    assert again.status_code == 304
    unversioned = client.get(url.split("?")[0])
    assert unversioned.status_code == 200
    assert "no-cache" in unversioned["Cache-Control"]


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/assets/index.html",
        "/dashboard/assets/..%2Fviews.py",
        "/dashboard/assets/dashboard.js.map",
    ],
)
def test_nothing_else_is_served_as_an_asset(transactional_db: None, path: str) -> None:
    assert Client().get(path).status_code == 404


def test_the_script_never_writes_html() -> None:
    """Event data reaches the page only as text: no HTML parsing of anything, anywhere."""
    script = (STATIC_DIR / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "http://" not in script
    assert "https://" not in script


# --- logging in ---------------------------------------------------------------------------


def test_a_user_who_is_not_staff_logs_in_through_the_login_page(people: dict[str, Any]) -> None:
    client = Client(enforce_csrf_checks=True)
    form = client.get("/login/?next=/")
    assert form.status_code == 200
    token = form.cookies["csrftoken"].value

    response = client.post(
        "/login/",
        {
            "username": "alice",
            "password": "alice-password-123",
            "next": "/",
            "csrfmiddlewaretoken": token,
        },
    )

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert 'data-graph-id="alice-graph"' in client.get("/").content.decode()


def test_logging_out_takes_a_post_and_leads_back_to_the_login_link(
    people: dict[str, Any],
) -> None:
    client = Client()
    client.force_login(people["alice"])

    assert client.get("/logout/").status_code == 405
    response = client.post("/logout/")

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert ("a", "/login/?next=/") in page_links(client.get("/").content.decode()).urls


def test_wrong_password_is_refused_with_a_message(people: dict[str, Any]) -> None:
    response = Client().post("/login/", {"username": "alice", "password": "nope", "next": "/"})

    assert response.status_code == 200
    assert "did not match" in response.content.decode()


# --- the demo button's endpoint -----------------------------------------------------------


class FakeDemo:
    """Stands in for executions.demo (the real one may not exist yet, and would publish)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def run_demo_graph(self, graph_id: str, **options: Any) -> str:
        self.calls.append(graph_id)
        self.started.set()
        await self.release.wait()
        return "demo-exec"


@pytest.fixture
def demo_on(settings: Any) -> None:
    """The demo runner, on without DEBUG (the tests run with DEBUG off)."""
    settings.EXECUTIONS_DEMO_ENABLED = True


@pytest.fixture
def fake_demo(monkeypatch: pytest.MonkeyPatch, demo_on: None) -> Iterator[FakeDemo]:
    fake = FakeDemo()
    module = types.ModuleType("executions.demo")
    module.run_demo_graph = fake.run_demo_graph  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "executions.demo", module)
    yield fake
    fake.release.set()


async def csrf_client(user: Any) -> tuple[AsyncClient, str]:
    """A logged-in client that enforces CSRF, and the token the dashboard gave it."""
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(user)
    page = await client.get("/")
    assert page.status_code == 200
    return client, client.cookies["csrftoken"].value


async def test_demo_starts_on_own_graph_and_answers_202(
    people: dict[str, Any], fake_demo: FakeDemo
) -> None:
    client, token = await csrf_client(people["alice"])

    response = await client.post(
        "/demo/run", {"graph_id": "alice-graph"}, headers={"X-CSRFToken": token}
    )

    assert response.status_code == 202
    assert response.json() == {"graph_id": "alice-graph", "started": True}
    await asyncio.wait_for(fake_demo.started.wait(), 5)
    assert fake_demo.calls == ["alice-graph"]
    running = [task for task in views.DEMO_TASKS if task.get_name() == "demo-graph:alice-graph"]
    assert len(running) == 1  # referenced while it runs, so it cannot be garbage collected
    fake_demo.release.set()
    await asyncio.wait_for(running[0], 5)
    assert running[0] not in views.DEMO_TASKS


@pytest.mark.parametrize("graph_id", ["bob-graph", "no-such-graph", ""])
async def test_demo_refuses_a_graph_the_user_does_not_own(
    people: dict[str, Any], fake_demo: FakeDemo, graph_id: str
) -> None:
    client, token = await csrf_client(people["alice"])

    response = await client.post(
        "/demo/run", {"graph_id": graph_id}, headers={"X-CSRFToken": token}
    )

    assert response.status_code == 403
    assert "error" in response.json()
    await asyncio.sleep(0)
    assert fake_demo.calls == []


async def test_demo_refuses_anonymous_visitors(people: dict[str, Any], fake_demo: FakeDemo) -> None:
    response = await AsyncClient().post("/demo/run", {"graph_id": "alice-graph"})

    assert response.status_code == 403
    assert fake_demo.calls == []


async def test_demo_needs_the_csrf_token(people: dict[str, Any], fake_demo: FakeDemo) -> None:
    client, _ = await csrf_client(people["alice"])

    response = await client.post("/demo/run", {"graph_id": "alice-graph"})

    assert response.status_code == 403
    assert b"CSRF" in response.content
    await asyncio.sleep(0)
    assert fake_demo.calls == []


async def test_demo_only_accepts_post(people: dict[str, Any], fake_demo: FakeDemo) -> None:
    client, _ = await csrf_client(people["alice"])

    assert (await client.get("/demo/run", {"graph_id": "alice-graph"})).status_code == 405


async def test_demo_runs_per_graph_are_bounded(people: dict[str, Any], fake_demo: FakeDemo) -> None:
    client, token = await csrf_client(people["alice"])

    async def start() -> int:
        response = await client.post(
            "/demo/run", {"graph_id": "alice-graph"}, headers={"X-CSRFToken": token}
        )
        return int(response.status_code)

    statuses = [await start() for _ in range(views.MAX_DEMO_RUNS_PER_GRAPH + 1)]

    assert statuses == [202] * views.MAX_DEMO_RUNS_PER_GRAPH + [429]
    fake_demo.release.set()
    for _ in range(50):
        if not views.DEMO_TASKS:
            break
        await asyncio.sleep(0.01)
    assert not views.DEMO_TASKS
    assert await start() == 202


async def test_demo_answers_503_without_the_demo_runner(
    people: dict[str, Any], monkeypatch: pytest.MonkeyPatch, demo_on: None
) -> None:
    monkeypatch.setitem(sys.modules, "executions.demo", None)  # import raises ImportError
    client, token = await csrf_client(people["alice"])

    response = await client.post(
        "/demo/run", {"graph_id": "alice-graph"}, headers={"X-CSRFToken": token}
    )

    assert response.status_code == 503


# --- the demo runner is off in production -------------------------------------------------


@pytest.fixture
def demo_off(settings: Any, monkeypatch: pytest.MonkeyPatch) -> FakeDemo:
    """DEBUG off and no EXECUTIONS_DEMO_ENABLED: production. The runner would be found."""
    settings.DEBUG = False
    settings.EXECUTIONS_DEMO_ENABLED = False
    fake = FakeDemo()
    module = types.ModuleType("executions.demo")
    module.run_demo_graph = fake.run_demo_graph  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "executions.demo", module)
    return fake


async def test_demo_is_off_in_production_with_a_clear_message(
    people: dict[str, Any], demo_off: FakeDemo
) -> None:
    client, token = await csrf_client(people["alice"])

    response = await client.post(
        "/demo/run", {"graph_id": "alice-graph"}, headers={"X-CSRFToken": token}
    )

    assert response.status_code == 404
    assert response.json() == {"error": views.DEMO_DISABLED}
    assert "EXECUTIONS_DEMO_ENABLED" in views.DEMO_DISABLED
    await asyncio.sleep(0)
    assert demo_off.calls == []
    assert not views.DEMO_TASKS


def test_the_page_has_no_demo_button_in_production(
    people: dict[str, Any], demo_off: FakeDemo
) -> None:
    client = Client()
    client.force_login(people["alice"])

    html = client.get("/").content.decode()

    assert 'data-graph-id="alice-graph"' in html  # the dashboard itself is there
    assert "Run demo graph" not in html
    assert 'id="demo-form"' not in html
    assert "/demo/run" not in html


@pytest.mark.parametrize("switch", ["DEBUG", "EXECUTIONS_DEMO_ENABLED"])
def test_debug_or_the_setting_turns_the_demo_button_on(
    people: dict[str, Any], demo_off: FakeDemo, settings: Any, switch: str
) -> None:
    setattr(settings, switch, True)
    client = Client()
    client.force_login(people["alice"])

    html = client.get("/").content.decode()

    assert "Run demo graph" in html
    assert 'action="/demo/run"' in html
