"""The dashboard, its two assets, login, and the button that starts a demo run.

Every URL the page shows or uses is reversed from the URLconf, so the dashboard works wherever
the site mounts ``executions.urls``.

The dashboard's JavaScript and CSS live in ``executions/static/executions/`` (so a site that
runs ``collectstatic`` ships them like any other static file), but the page loads them from
:func:`dashboard_asset`, a view of this app: plain daphne or uvicorn with ``DEBUG`` off serve no
``/static/`` at all, and the dashboard has to work on exactly that setup. The URL carries a hash
of the file's content, so browsers cache it for good and a changed file is fetched at once.
"""

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.contrib.auth import views as auth_views
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET, require_POST

from executions import conf
from executions.models import Graph
from executions.schemas import MAX_GRAPH_ID_LENGTH

logger = logging.getLogger(__name__)

ASSET_DIR = Path(__file__).resolve().parent / "static" / "executions"
# The only files dashboard_asset serves, with their content types.
ASSET_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

# Demo runs started by the button; the event loop keeps only weak references to tasks.
DEMO_TASKS: set["asyncio.Task[Any]"] = set()
# Demo runs of one graph at a time, so a held-down button cannot start hundreds.
MAX_DEMO_RUNS_PER_GRAPH = 3
DEMO_DISABLED = (
    "The demo runner is off on this server: it runs with DEBUG on, or with "
    "EXECUTIONS_DEMO_ENABLED = True."
)


def _websocket_url(request: HttpRequest, path: str) -> str:
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}{path}"


def _optional_reverse(name: str, *args: str) -> str | None:
    """The URL of a route the site may have left out (the API docs can be turned off)."""
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None


def _api_docs_url(name: str) -> str | None:
    """A link to the API docs or schema, unless they are off or left out of the URLconf."""
    return _optional_reverse(name) if conf.api_docs_enabled() else None


@dataclass(frozen=True)
class GraphLink:
    """A graph of the dashboard's list, with the URLs the page follows it by over plain HTTP
    when the WebSocket cannot connect (None: that graph has no such URL)."""

    graph: Graph
    events_url: str | None  # its Server-Sent Events stream
    history_url: str | None  # its history, whose head the stream starts after


def _graph_url(name: str, graph_id: str) -> str | None:
    """The URL of a route with the graph id in its path, or None where no browser could request it.

    A browser resolves "." and ".." path segments away before sending a request (even written
    %2E), so ``a/../b`` would reach graph ``b``; and a graph id with a line break matches no route.
    """
    if any(segment in {".", ".."} for segment in graph_id.split("/")):
        return None
    return _optional_reverse(name, graph_id)


def graph_link(graph: Graph) -> GraphLink:
    return GraphLink(
        graph,
        events_url=_graph_url("executions-graph-events", graph.pk),
        history_url=_graph_url("executions-api:graph_history", graph.pk),
    )


# Stands for the execution's id in the URL the page follows one execution by over Server-Sent
# Events; dashboard.js puts the percent-encoded id in its place (the same name is there).
EXECUTION_ID_PLACEHOLDER = "GRAPH_EXEC_ID"


def execution_events_url() -> str | None:
    """The Server-Sent Events URL of one execution, its id left as EXECUTION_ID_PLACEHOLDER;
    None where the site left the route out."""
    return _optional_reverse("executions-execution-events", EXECUTION_ID_PLACEHOLDER)


def index(request: HttpRequest) -> HttpResponse:
    """The dashboard: the user's graphs and their executions, live; for programs, how to connect."""
    user = request.user
    graphs = list(Graph.objects.filter(owner=user)) if user.is_authenticated else []
    here = reverse("executions-index")
    websocket_path = reverse("executions-websocket")
    return render(
        request,
        "executions/index.html",
        {
            "websocket_path": websocket_path,
            "websocket_url": _websocket_url(request, websocket_path),
            "graphs": graphs,
            "graph_links": [graph_link(graph) for graph in graphs],
            "execution_events_url": execution_events_url(),
            "login_url": f"{reverse('executions-login')}?next={here}",
            "ingest_url": reverse("executions-api:ingest"),
            "ws_token_url": reverse("executions-api:ws-token"),
            "api_docs_url": _api_docs_url("executions-api:openapi-view"),
            "api_schema_url": _api_docs_url("executions-api:openapi-json"),
            "demo_enabled": conf.demo_enabled(),
            "script_url": asset_url("dashboard.js"),
            "stylesheet_url": asset_url("dashboard.css"),
        },
    )


class LoginView(auth_views.LoginView):
    """Django's login form for every user: the admin's refuses users who are not staff."""

    template_name = "executions/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {
            **super().get_context_data(**kwargs),
            "stylesheet_url": asset_url("dashboard.css"),
            "dashboard_url": reverse("executions-index"),
        }

    def get_default_redirect_url(self) -> str:
        """Without a ``next``, back to the dashboard (not LOGIN_REDIRECT_URL's profile page)."""
        return reverse("executions-index")


class LogoutView(auth_views.LogoutView):
    def get_default_redirect_url(self) -> str:
        return reverse("executions-index")


# --- the dashboard's JavaScript and CSS ---------------------------------------------------


@dataclass(frozen=True)
class Asset:
    content: bytes
    version: str  # the first hex digits of the content's SHA-256


@lru_cache(maxsize=8)
def _read_asset(name: str, modified_ns: int) -> Asset:
    content = (ASSET_DIR / name).read_bytes()
    return Asset(content, hashlib.sha256(content).hexdigest()[:16])


def load_asset(name: str) -> Asset:
    """The current content of an allowed asset; re-read when the file changes."""
    if name not in ASSET_TYPES:
        raise Http404("No such dashboard asset.")
    try:
        modified_ns = (ASSET_DIR / name).stat().st_mtime_ns
    except FileNotFoundError:
        raise Http404("No such dashboard asset.") from None
    return _read_asset(name, modified_ns)


def asset_url(name: str) -> str:
    """The asset's URL, versioned by its content so that it can be cached for good."""
    path = reverse("executions-dashboard-asset", args=[name])
    return f"{path}?v={load_asset(name).version}"


@require_GET
def dashboard_asset(request: HttpRequest, name: str) -> HttpResponse:
    """Serve dashboard.js or dashboard.css, whatever serves (or does not serve) /static/."""
    asset = load_asset(name)
    etag = f'"{asset.version}"'
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(asset.content, content_type=ASSET_TYPES[name])
    response["ETag"] = etag
    if request.GET.get("v") == asset.version:
        patch_cache_control(response, public=True, max_age=365 * 24 * 3600, immutable=True)
    else:
        patch_cache_control(response, no_cache=True)
    return response


# --- the "Run demo graph" button ----------------------------------------------------------


def _refusal(status: int, error: str) -> JsonResponse:
    return JsonResponse({"error": error}, status=status)


@require_POST
async def run_demo(request: HttpRequest) -> HttpResponseBase:
    """Start the demo runner on one of the user's graphs; answer 202 at once.

    Form field ``graph_id``. 404 unless the demo runner is on (DEBUG or
    ``EXECUTIONS_DEMO_ENABLED``: it writes made-up events into the graph's permanent history),
    403 when not logged in or not the graph's owner (the CSRF check of the middleware comes
    first), 429 while that graph already has its share of demo runs going.
    """
    if not conf.demo_enabled():
        return _refusal(404, DEMO_DISABLED)
    user = await request.auser()
    graph_id = request.POST.get("graph_id", "")
    if not user.is_authenticated:
        return _refusal(403, "Log in to run the demo graph.")
    if (
        not 0 < len(graph_id) <= MAX_GRAPH_ID_LENGTH
        or not await Graph.objects.filter(pk=graph_id, owner=user).aexists()
    ):
        return _refusal(403, "Not allowed to run a demo on this graph.")
    task_name = f"demo-graph:{graph_id}"
    if sum(task.get_name() == task_name for task in DEMO_TASKS) >= MAX_DEMO_RUNS_PER_GRAPH:
        return _refusal(429, "This graph is already running demo executions; try again soon.")
    try:
        # Imported here so that the dashboard works even where the demo runner is absent.
        from executions.demo import run_demo_graph
    except ImportError:
        logger.exception("The demo runner (executions.demo) cannot be imported.")
        return _refusal(503, "The demo runner is not available on this server.")
    task = asyncio.create_task(run_demo_graph(graph_id), name=task_name)
    DEMO_TASKS.add(task)
    task.add_done_callback(_demo_finished)
    return JsonResponse({"graph_id": graph_id, "started": True}, status=202)


def _demo_finished(task: "asyncio.Task[Any]") -> None:
    DEMO_TASKS.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logger.error("Demo run %s failed", task.get_name(), exc_info=error)
