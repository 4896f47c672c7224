"""A demo graph runner: something to watch on a fresh install.

``run_demo_graph(graph_id)`` runs a small pipeline of nodes ("fetch-data", "parse-json",
"summarize", ...) and publishes each node's progress the way an executor would, through the
public helper ``executions.events.send_execution_result`` (or any publisher passed in):

- the nodes form a chain, each taking its upstream node's output as input;
- a node is QUEUED once its upstream node has COMPLETED (its inputs are ready), goes RUNNING a
  moment later, and ends COMPLETED with its outputs or FAILED with an ``error`` output;
- a FAILED node stops the run: the nodes downstream of it never get their inputs, so they are
  never queued and publish nothing. Every node that publishes anything publishes exactly
  QUEUED, RUNNING, then COMPLETED or FAILED, in that order.

Timings are realistic and consistent: ``add_time`` and ``queue_time`` are set when a node is
queued, ``start_time`` when it starts, ``end_time`` when it ends, all from the clock at
publishing time; the waits scale with ``step_seconds`` (language-model blocks take longer than
parsing ones). ``seed`` makes the failures, waits and data reproducible; the execution ids are
always new UUIDs, so two runs never look like one.

Three ways to publish: ``run_demo_graph`` (async, in-process: the helper by default),
``run_demo_graph_sync`` (sync code and ``django.tasks``: ``send_execution_result_sync`` by
default), and ``ingest_publisher(url, token)``, which POSTs each result to a running server's
``/api/executions`` (what ``manage.py run_demo_graph`` does on the in-memory channel layer).
"""

import asyncio
import json
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from executions.schemas import ExecutionResult, ExecutionStatus

AsyncPublisher = Callable[[ExecutionResult], Awaitable[object]]
SyncPublisher = Callable[[ExecutionResult], object]

MAX_NODES: Final = 50
GRAPH_VERSION: Final = 1


@dataclass(frozen=True)
class _Block:
    """A kind of node of the demo pipeline: what it takes, gives, and says when it fails."""

    node_id: str
    block_id: str
    inputs: dict[str, Any]
    outputs: dict[str, list[Any]]
    error: str
    weight: float  # how long it runs compared to the others


_PIPELINE: Final = (
    _Block(
        "fetch-data",
        "http-request",
        {"url": "https://api.example.com/v1/articles?topic=energy&limit=3", "method": "GET"},
        {"status": [200], "response": ['{"articles": [{"id": 101}, {"id": 102}, {"id": 103}]}']},
        "HTTPError: 503 Service Unavailable from api.example.com",
        0.8,
    ),
    _Block(
        "parse-json",
        "json-parser",
        {"path": "$.articles"},
        {"items": [{"id": 101}, {"id": 102}, {"id": 103}]},
        "JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
        0.3,
    ),
    _Block(
        "clean-text",
        "text-cleaner",
        {"strip_html": True, "language": "en"},
        {"text": ["Solar capacity grew 24% last year, led by utility-scale projects..."]},
        "ValueError: no text left after cleaning",
        0.4,
    ),
    _Block(
        "extract-entities",
        "ai-entity-extractor",
        {"model": "gpt-4o-mini", "entity_types": ["ORG", "GPE", "PERCENT"]},
        {"entities": [{"text": "IEA", "type": "ORG"}, {"text": "24%", "type": "PERCENT"}]},
        "RateLimitError: model provider answered 429 Too Many Requests",
        1.4,
    ),
    _Block(
        "summarize",
        "ai-text-summarizer",
        {"model": "gpt-4o-mini", "max_words": 60, "style": "bullet points"},
        {"summary": ["- Solar capacity up 24%\n- Utility-scale projects lead the growth"]},
        "TimeoutError: the model did not answer within 30 s",
        1.6,
    ),
    _Block(
        "translate",
        "ai-translator",
        {"model": "gpt-4o-mini", "target_language": "fr"},
        {"translation": ["- Capacité solaire en hausse de 24 %\n- Les grands projets en tête"]},
        "ValueError: unsupported target language",
        1.2,
    ),
    _Block(
        "classify-sentiment",
        "ai-classifier",
        {"labels": ["positive", "neutral", "negative"]},
        {"label": ["positive"], "confidence": [0.91]},
        "RuntimeError: classifier returned no label",
        0.9,
    ),
    _Block(
        "store-results",
        "database-write",
        {"table": "article_summaries", "upsert": True},
        {"rows_written": [3]},
        "OperationalError: could not connect to server: Connection refused",
        0.5,
    ),
    _Block(
        "notify-team",
        "send-slack-message",
        {"channel": "#energy-news", "mention": "@here"},
        {"message_ts": ["1712345678.000200"], "ok": [True]},
        "SlackApiError: channel_not_found",
        0.4,
    ),
)


@dataclass(frozen=True)
class DemoNode:
    """One node of a planned run, with what it will do."""

    index: int
    node_id: str
    block_id: str
    node_exec_id: str
    input_data: dict[str, Any]
    output_data: dict[str, list[Any]]
    error: str
    fails: bool
    queue_wait: float  # seconds between QUEUED and RUNNING
    run_time: float  # seconds between RUNNING and the end


@dataclass
class _Times:
    add_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass
class DemoRun:
    """A planned run of the demo graph: its nodes, then its events as they happen."""

    graph_id: str
    graph_exec_id: str
    nodes: list[DemoNode]
    _times: dict[str, _Times] = field(default_factory=dict, repr=False)

    def steps(self) -> Iterator[tuple[float, DemoNode, ExecutionStatus]]:
        """(seconds to wait first, node, status) for every event, in publishing order."""
        for node in self.nodes:
            yield 0.0, node, ExecutionStatus.QUEUED
            yield node.queue_wait, node, ExecutionStatus.RUNNING
            yield (
                node.run_time,
                node,
                ExecutionStatus.FAILED if node.fails else ExecutionStatus.COMPLETED,
            )
            if node.fails:
                return

    def result(self, node: DemoNode, status: ExecutionStatus) -> ExecutionResult:
        """The node's result for `status`, its times set from the clock now."""
        now = datetime.now(tz=UTC)
        if status == ExecutionStatus.QUEUED:
            times = self._times[node.node_exec_id] = _Times(add_time=now)
        else:
            times = self._times[node.node_exec_id]
            if status == ExecutionStatus.RUNNING:
                times.start_time = now
            else:
                times.end_time = now
        if status == ExecutionStatus.COMPLETED:
            output_data = node.output_data
        elif status == ExecutionStatus.FAILED:
            output_data = {"error": [node.error]}
        else:
            output_data = {}
        return ExecutionResult(
            graph_id=self.graph_id,
            graph_version=GRAPH_VERSION,
            graph_exec_id=self.graph_exec_id,
            node_exec_id=node.node_exec_id,
            node_id=node.node_id,
            block_id=node.block_id,
            status=status,
            input_data=node.input_data,
            output_data=output_data,
            add_time=times.add_time,
            queue_time=times.add_time,
            start_time=times.start_time,
            end_time=times.end_time,
        )


def plan_demo_graph(
    graph_id: str,
    nodes: int = 5,
    fail_rate: float = 0.0,
    step_seconds: float = 0.3,
    seed: int | None = None,
) -> DemoRun:
    """Plan a run: which nodes, with what data, which one fails (each with `fail_rate`)."""
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes must be between 1 and {MAX_NODES}.")
    if not 0.0 <= fail_rate <= 1.0:
        raise ValueError("fail_rate must be between 0 and 1.")
    if step_seconds < 0:
        raise ValueError("step_seconds must be zero or more.")
    rng = random.Random(seed)
    planned: list[DemoNode] = []
    upstream: dict[str, list[Any]] | None = None
    for index in range(nodes):
        block = _PIPELINE[index % len(_PIPELINE)]
        rounds = index // len(_PIPELINE)
        node_id = block.node_id if rounds == 0 else f"{block.node_id}-{rounds + 1}"
        input_data = dict(block.inputs)
        if upstream is not None:
            input_data["input"] = next(iter(upstream.values()))
        planned.append(
            DemoNode(
                index=index,
                node_id=node_id,
                block_id=block.block_id,
                node_exec_id=str(uuid.uuid4()),
                input_data=input_data,
                output_data=block.outputs,
                error=block.error,
                fails=rng.random() < fail_rate,
                queue_wait=round(step_seconds * rng.uniform(0.15, 0.4), 4),
                run_time=round(step_seconds * block.weight * rng.uniform(0.7, 1.3), 4),
            )
        )
        upstream = block.outputs
    return DemoRun(graph_id=graph_id, graph_exec_id=str(uuid.uuid4()), nodes=planned)


async def run_demo_graph(
    graph_id: str,
    nodes: int = 5,
    fail_rate: float = 0.0,
    step_seconds: float = 0.3,
    seed: int | None = None,
    *,
    publish: AsyncPublisher | None = None,
) -> str:
    """Run the demo graph, publishing every event as it happens; return the graph_exec_id.

    Publishes through ``executions.events.send_execution_result`` unless `publish` is given
    (for instance ``ingest_publisher(url, token)``). Safe to start with
    ``asyncio.create_task`` from an async view.
    """
    if publish is None:
        from executions.events import send_execution_result

        publish = send_execution_result
    run = plan_demo_graph(graph_id, nodes, fail_rate, step_seconds, seed)
    for wait, node, status in run.steps():
        if wait:
            await asyncio.sleep(wait)
        await publish(run.result(node, status))
    return run.graph_exec_id


def run_demo_graph_sync(
    graph_id: str,
    nodes: int = 5,
    fail_rate: float = 0.0,
    step_seconds: float = 0.3,
    seed: int | None = None,
    *,
    publish: SyncPublisher | None = None,
) -> str:
    """The same as run_demo_graph, for synchronous code (views, tasks): blocks while it runs.

    Publishes through ``executions.events.send_execution_result_sync`` unless `publish` is
    given. Not from a thread running an event loop: use run_demo_graph there.
    """
    if publish is None:
        from executions.events import send_execution_result_sync

        publish = send_execution_result_sync
    run = plan_demo_graph(graph_id, nodes, fail_rate, step_seconds, seed)
    for wait, node, status in run.steps():
        if wait:
            time.sleep(wait)
        publish(run.result(node, status))
    return run.graph_exec_id


class IngestFailed(RuntimeError):
    """The server's ingest endpoint did not accept a result."""

    def __init__(self, url: str, detail: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        self.detail = detail
        super().__init__(f"POST {url} failed: {detail}")


def _post(url: str, body: bytes, token: str, timeout: float) -> None:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        with error:
            text = error.read().decode("utf-8", "replace")
        try:
            detail = str(json.loads(text).get("error", text))
        except (ValueError, AttributeError):
            detail = text
        raise IngestFailed(url, f"HTTP {error.code}: {detail}", error.code) from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise IngestFailed(url, f"the server did not answer ({reason})") from error


def ingest_url(base_url: str) -> str:
    """The ingest endpoint of the server at `base_url`, where this project's URLconf mounts it."""
    from django.urls import reverse

    return base_url.rstrip("/") + reverse("executions-api:ingest")


def ingest_publisher(base_url: str, token: str, timeout: float = 10.0) -> AsyncPublisher:
    """A publisher that POSTs each result to the server's ingest endpoint with the token."""
    url = ingest_url(base_url)

    async def publish(result: ExecutionResult) -> None:
        body = result.model_dump_json().encode("utf-8")
        await asyncio.to_thread(_post, url, body, token, timeout)

    return publish
