"""The demo graph runner publishes, for every node it runs, the statuses it claims, in order.

In process: run_demo_graph through the public helper, watched by a WebSocket subscriber of the
real ASGI app; the Django task through the sync helper, read back from the history. Across
processes: ``manage.py run_demo_graph`` on the in-memory layer POSTs to a running daphne (and,
with Redis, publishes through the helpers), and the Python client sees the events.
"""

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from executions import history
from executions.client import connect
from executions.demo import plan_demo_graph, run_demo_graph
from executions.layers import channel_layer_config
from executions.schemas import ExecutionResult, ExecutionStatus
from tests.servers import DaphneServer, Site, prepare_site, run_manage
from tests.support import needs_django_tasks, redis_url_or_skip

QUEUED, RUNNING = ExecutionStatus.QUEUED, ExecutionStatus.RUNNING
COMPLETED, FAILED = ExecutionStatus.COMPLETED, ExecutionStatus.FAILED
PIPELINE = ["fetch-data", "parse-json", "clean-text", "extract-entities", "summarize"]
RECEIVE_TIMEOUT = 10.0


def by_node(results: Sequence[ExecutionResult]) -> dict[str, list[ExecutionStatus]]:
    """Each node's statuses in the order they were published (nodes in first-seen order)."""
    statuses: dict[str, list[ExecutionStatus]] = {}
    for result in results:
        statuses.setdefault(result.node_id, []).append(result.status)
    return statuses


def assert_consistent(results: Sequence[ExecutionResult], graph_exec_id: str) -> None:
    """One execution; each node's times set when claimed and never going backwards."""
    assert {result.graph_exec_id for result in results} == {graph_exec_id}
    for result in results:
        assert result.queue_time == result.add_time
        if result.status == QUEUED:
            assert (result.start_time, result.end_time) == (None, None)
            assert result.output_data == {}
        elif result.status == RUNNING:
            assert result.start_time is not None
            assert result.end_time is None
            assert result.start_time >= result.add_time
        else:
            assert result.start_time is not None
            assert result.end_time is not None
            assert result.add_time <= result.start_time <= result.end_time
    exec_ids = {}
    for result in results:  # one node execution per node, for all its statuses
        assert exec_ids.setdefault(result.node_id, result.node_exec_id) == result.node_exec_id


def failing_seed(nodes: int, fail_rate: float, failing_index: int) -> int:
    """A seed with which exactly the node at `failing_index` is the first to fail."""
    for seed in range(1000):
        plan = plan_demo_graph("g", nodes, fail_rate, 0, seed)
        if [node.fails for node in plan.nodes[: failing_index + 1]] == [False] * failing_index + [
            True
        ]:
            return seed
    raise AssertionError("no seed found")


# --- in process ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_every_node_goes_queued_running_completed_in_order(
    connect: Any, alice_token: str
) -> None:
    client = await connect(token=alice_token)
    await client.send_json_to(
        {"method": "subscribe", "data": {"graph_id": "test_graph", "since": 0}}
    )
    assert (await client.receive_json_from(timeout=5))["success"] is True

    graph_exec_id = await run_demo_graph("test_graph", nodes=5, step_seconds=0.01, seed=3)

    frames = [await client.receive_json_from(timeout=5) for _ in range(15)]
    assert await client.receive_nothing(timeout=0.2)
    assert [frame["seq"] for frame in frames] == list(range(1, 16))
    results = [ExecutionResult.model_validate(frame["data"]) for frame in frames]
    assert by_node(results) == {node: [QUEUED, RUNNING, COMPLETED] for node in PIPELINE}
    assert [result.node_id for result in results] == [n for n in PIPELINE for _ in range(3)]
    assert_consistent(results, graph_exec_id)
    assert all(result.output_data for result in results if result.status == COMPLETED)
    # Each node takes its upstream node's output as input.
    assert results[3].input_data["input"] == next(iter(results[2].output_data.values()))


@pytest.mark.django_db(transaction=True)
async def test_with_fail_rate_1_the_first_node_fails_and_nothing_downstream_runs(
    channel_layer: Any,
) -> None:
    published: list[ExecutionResult] = []

    async def publish(result: ExecutionResult) -> None:
        published.append(result)

    graph_exec_id = await run_demo_graph("test_graph", nodes=5, fail_rate=1.0, step_seconds=0)
    await run_demo_graph("graph-2", nodes=5, fail_rate=1.0, step_seconds=0, publish=publish)

    stored = [
        ExecutionResult.model_validate(event.result())
        for event in await asyncio.to_thread(history.events_after, "test_graph", 0, 100)
    ]
    for results in (stored, published):
        assert by_node(results) == {"fetch-data": [QUEUED, RUNNING, FAILED]}
        assert results[-1].output_data == {
            "error": ["HTTPError: 503 Service Unavailable from api.example.com"]
        }
    assert_consistent(stored, graph_exec_id)


async def test_a_failed_node_stops_the_nodes_downstream_of_it() -> None:
    published: list[ExecutionResult] = []

    async def publish(result: ExecutionResult) -> None:
        published.append(result)

    seed = failing_seed(nodes=5, fail_rate=0.3, failing_index=2)
    graph_exec_id = await run_demo_graph(
        "g", nodes=5, fail_rate=0.3, step_seconds=0, seed=seed, publish=publish
    )

    assert by_node(published) == {
        "fetch-data": [QUEUED, RUNNING, COMPLETED],
        "parse-json": [QUEUED, RUNNING, COMPLETED],
        "clean-text": [QUEUED, RUNNING, FAILED],
    }
    assert_consistent(published, graph_exec_id)


async def test_invalid_arguments_are_refused() -> None:
    for kwargs in ({"nodes": 0}, {"nodes": 51}, {"fail_rate": 1.5}, {"step_seconds": -1}):
        with pytest.raises(ValueError, match="must be"):
            await run_demo_graph("g", **kwargs)


@needs_django_tasks
def test_the_django_task_runs_the_demo_through_the_sync_helpers(
    settings: Any, transactional_db: None, make_user: Any
) -> None:
    from django.tasks import TaskResultStatus

    from executions.demo_tasks import run_demo_graph_task

    settings.CHANNEL_LAYERS = {"default": channel_layer_config()}
    make_user("alice", graphs=("test_graph",))

    task_result = run_demo_graph_task.enqueue("test_graph", nodes=3, fail_rate=0.0)

    assert task_result.status == TaskResultStatus.SUCCESSFUL, task_result.errors
    stored = [
        ExecutionResult.model_validate(event.result())
        for event in history.events_after("test_graph", 0, 100)
    ]
    assert by_node(stored) == {node: [QUEUED, RUNNING, COMPLETED] for node in PIPELINE[:3]}
    assert_consistent(stored, task_result.return_value)


def test_the_command_needs_the_ingest_token_with_the_in_memory_layer(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": channel_layer_config()}
    settings.EXECUTIONS_INGEST_TOKEN = ""
    with pytest.raises(CommandError, match="EXECUTIONS_INGEST_TOKEN"):
        call_command("run_demo_graph", "--nodes", "2")


# --- the command, across processes --------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return prepare_site(tmp_path_factory.mktemp("demo-site"))


@pytest.fixture(scope="module")
def site_token(site: Site) -> str:
    """Alice's WebSocket token on this site's database."""
    return site.token_for("alice")


@pytest.fixture
def graph_id(site: Site, site_token: str) -> str:
    graph_id = f"demo-{uuid.uuid4().hex[:12]}"
    site.register_graph(graph_id, owner="alice")
    return graph_id


@pytest.fixture(scope="module")
def server(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneServer]:
    with DaphneServer(site.env, tmp_path_factory.mktemp("demo-logs")) as daphne:
        yield daphne


async def run_command_and_watch(
    env: dict[str, str], server: DaphneServer, graph_id: str, token: str
) -> tuple[str, list[ExecutionResult]]:
    """Run manage.py run_demo_graph (3 nodes) while the Python client watches the graph."""
    args = ("--graph", graph_id, "--nodes", "3", "--step-seconds", "0.01", "--seed", "7")
    async with connect(server.ws_url, token=token) as stream:
        subscription = stream.subscribe(graph_id, since=0)
        completed = await asyncio.to_thread(
            run_manage, env, "run_demo_graph", *args, "--url", server.http_url
        )
        results: list[ExecutionResult] = []
        async with asyncio.timeout(RECEIVE_TIMEOUT):
            async for result in subscription:
                results.append(result)
                if len(results) == 9:
                    break
    return completed.stdout, results


async def test_the_command_posts_to_the_running_server_on_the_in_memory_layer(
    site: Site, server: DaphneServer, graph_id: str, site_token: str
) -> None:
    stdout, results = await run_command_and_watch(site.env, server, graph_id, site_token)

    assert by_node(results) == {node: [QUEUED, RUNNING, COMPLETED] for node in PIPELINE[:3]}
    assert f"{server.http_url}/api/executions" in stdout
    assert f"Execution {results[0].graph_exec_id} of graph {graph_id!r} completed." in stdout
    assert stdout.count("COMPLETED") == 3


@pytest.mark.redis
async def test_the_command_publishes_through_the_helpers_with_redis(
    site: Site, graph_id: str, site_token: str, tmp_path: Path
) -> None:
    env = site.with_redis(redis_url_or_skip(), "pubsub")
    with DaphneServer(env, tmp_path, "demo-redis") as server:
        stdout, results = await run_command_and_watch(env, server, graph_id, site_token)

    assert by_node(results) == {node: [QUEUED, RUNNING, COMPLETED] for node in PIPELINE[:3]}
    assert "publishing to the channel layer" in stdout


async def test_the_command_explains_an_unreachable_server(site: Site) -> None:
    completed = await asyncio.to_thread(
        site.manage,
        "run_demo_graph",
        "--nodes",
        "1",
        "--url",
        "http://127.0.0.1:9",
        check=False,
    )
    assert completed.returncode == 1
    assert "is the server running?" in completed.stderr
