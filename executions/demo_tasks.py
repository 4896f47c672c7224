"""The demo graph as a Django task (``django.tasks``), publishing through the sync helpers.

::

    from executions.demo_tasks import run_demo_graph_task

    result = run_demo_graph_task.enqueue("demo", nodes=5, fail_rate=0.2)

With Django's default ``ImmediateBackend`` the task runs at once, in the caller's thread, and
``result.return_value`` is the graph_exec_id; with a worker backend it runs in the worker (which
reaches the server's subscribers through a Redis channel layer). From async code, use
``await run_demo_graph_task.aenqueue(...)`` or ``executions.demo.run_demo_graph``.

Needs Django 6.0 or newer, where ``django.tasks`` appeared. On Django 5.2 this module still
imports but defines no task, and importing ``run_demo_graph_task`` raises an ImportError that
says so: call ``executions.demo.run_demo_graph_sync`` (or ``await run_demo_graph``) instead.
"""

from typing import TYPE_CHECKING

from executions.compat import HAS_DJANGO_TASKS, tasks_need_django_6
from executions.demo import run_demo_graph_sync

if TYPE_CHECKING or HAS_DJANGO_TASKS:
    from django.tasks import task

    @task
    def run_demo_graph_task(
        graph_id: str,
        nodes: int = 5,
        fail_rate: float = 0.0,
        step_seconds: float = 0.3,
        seed: int | None = None,
    ) -> str:
        """Run the demo graph, publishing with send_execution_result_sync; return its exec id."""
        return run_demo_graph_sync(
            graph_id, nodes=nodes, fail_rate=fail_rate, step_seconds=step_seconds, seed=seed
        )

else:
    __getattr__ = tasks_need_django_6(
        __name__,
        "call executions.demo.run_demo_graph_sync, or await executions.demo.run_demo_graph.",
        "run_demo_graph_task",
    )
