"""Who may subscribe to a graph's events; replaceable with EXECUTIONS_SUBSCRIBE_POLICY."""

from typing import Any

from executions.models import Graph


def owner_may_subscribe(user: Any, graph_id: str) -> bool:
    """Allow a user to follow the graphs they own, and nothing else."""
    if not user.is_authenticated:
        return False
    return Graph.objects.filter(pk=graph_id, owner_id=user.pk).exists()
