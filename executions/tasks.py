"""Django tasks of the app (``django.tasks``): enqueue them from your scheduler.

Needs Django 6.0 or newer, where ``django.tasks`` appeared. On Django 5.2 this module still
imports but defines no task, and ``from executions.tasks import prune_execution_history`` raises
an ImportError that says so: run ``manage.py prune_execution_history`` from cron or any
scheduler, or call ``executions.retention.prune_configured()`` from your own task.
"""

from typing import TYPE_CHECKING

from executions.compat import HAS_DJANGO_TASKS, tasks_need_django_6
from executions.retention import prune_configured

if TYPE_CHECKING or HAS_DJANGO_TASKS:
    from django.tasks import task

    @task
    def prune_execution_history() -> dict[str, int]:
        """Prune every graph's stored events down to the configured retention."""
        report = prune_configured()
        return {"graphs": report.graphs, "deleted": report.deleted}

else:
    __getattr__ = tasks_need_django_6(
        __name__,
        "run `manage.py prune_execution_history` from a scheduler, or call "
        "executions.retention.prune_configured() from your own task.",
        "prune_execution_history",
    )
