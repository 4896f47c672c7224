import asyncio
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from executions import conf
from executions.checks import layer_backend
from executions.demo import (
    AsyncPublisher,
    IngestFailed,
    ingest_publisher,
    ingest_url,
    run_demo_graph,
)
from executions.exceptions import PublishNotDelivered
from executions.layers import IN_MEMORY_LAYER
from executions.schemas import ExecutionResult, ExecutionStatus


class Command(BaseCommand):
    help = (
        "Run a demo graph of nodes through QUEUED, RUNNING, COMPLETED or FAILED, publishing "
        "each event: through the helpers with a Redis channel layer, else by POSTing to the "
        "running server's /api/executions (EXECUTIONS_INGEST_TOKEN)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--graph", default="demo", help="graph id (default: demo)")
        parser.add_argument("--nodes", type=int, default=5, help="how many nodes (1 to 50)")
        parser.add_argument(
            "--fail-rate", type=float, default=0.0, help="chance that each node fails (0 to 1)"
        )
        parser.add_argument(
            "--step-seconds", type=float, default=0.3, help="scale of the waits, in seconds"
        )
        parser.add_argument("--seed", type=int, default=None, help="reproducible failures/data")
        parser.add_argument(
            "--url",
            default="http://127.0.0.1:8000",
            help="the running server, used with the in-memory channel layer",
        )

    def handle(
        self,
        *args: Any,
        graph: str,
        nodes: int,
        fail_rate: float,
        step_seconds: float,
        seed: int | None,
        url: str,
        **options: Any,
    ) -> None:
        if not 1 <= nodes <= 50:
            raise CommandError("--nodes must be between 1 and 50.")
        if not 0.0 <= fail_rate <= 1.0:
            raise CommandError("--fail-rate must be between 0 and 1.")
        if step_seconds < 0:
            raise CommandError("--step-seconds must be zero or more.")
        publisher: AsyncPublisher | None = None
        if layer_backend() == IN_MEMORY_LAYER:
            # This process's in-memory layer reaches nobody: hand the events to the server.
            token = conf.get("EXECUTIONS_INGEST_TOKEN")
            if not token:
                raise CommandError(
                    "With the in-memory channel layer the demo publishes through the running "
                    f"server's {ingest_url(url)}, which needs EXECUTIONS_INGEST_TOKEN (the "
                    "same value as the server's). Set it, or set REDIS_URL for both."
                )
            publisher = ingest_publisher(url, token)
            via = ingest_url(url)
        else:
            via = "the channel layer"
        self.stdout.write(f"Running demo graph {graph!r} ({nodes} node(s)), publishing to {via}")
        outcome: dict[str, ExecutionResult] = {}

        async def publish_and_report(result: ExecutionResult) -> None:
            if publisher is None:
                from executions.events import send_execution_result

                await send_execution_result(result)
            else:
                await publisher(result)
            outcome["last"] = result
            self.stdout.write(f"  {result.node_id:<22} {result.status.value}")

        try:
            exec_id = asyncio.run(
                run_demo_graph(
                    graph,
                    nodes=nodes,
                    fail_rate=fail_rate,
                    step_seconds=step_seconds,
                    seed=seed,
                    publish=publish_and_report,
                )
            )
        except PublishNotDelivered as exc:
            raise CommandError(str(exc)) from exc
        except IngestFailed as exc:
            hint = (
                " (the command and the server must share EXECUTIONS_INGEST_TOKEN)"
                if exc.status in (401, 403)
                else " (is the server running? make run)"
                if exc.status is None
                else ""
            )
            raise CommandError(f"{exc}{hint}") from exc
        last = outcome.get("last")
        if last is not None and last.status == ExecutionStatus.FAILED:
            verdict = f"failed at node {last.node_id!r}"
        else:
            verdict = "completed"
        self.stdout.write(f"Execution {exec_id} of graph {graph!r} {verdict}.")
