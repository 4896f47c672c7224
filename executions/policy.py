"""Who may subscribe to a graph's events; replaceable with EXECUTIONS_SUBSCRIBE_POLICY."""

from typing import Any

from executions.models import Graph


def owner_may_subscribe(user: Any, graph_id: str) -> bool:
    """Allow a user to follow the graphs they own, and nothing else."""
    if not user.is_authenticated:
        return False
    return Graph.objects.filter(pk=graph_id, owner_id=user.pk).exists()


def graph_owner_id(graph_id: str) -> str | None:
    """The owner of a registered graph, as AutoGPT's events spell a user_id; None if unknown."""
    owner = Graph.objects.filter(pk=graph_id).values_list("owner_id", flat=True).first()
    return None if owner is None else str(owner)
