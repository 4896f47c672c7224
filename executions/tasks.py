"""Django tasks of the app (``django.tasks``): enqueue them from your scheduler."""

from django.tasks import task

from executions.retention import prune_configured


@task
def prune_execution_history() -> dict[str, int]:
    """Prune every graph's stored events down to the configured retention."""
    report = prune_configured()
    return {"graphs": report.graphs, "deleted": report.deleted}
