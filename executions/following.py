"""What a subscription may follow, checked the same way for WebSockets, SSE and the history API.

Each function runs in a thread (it reads the database) and answers one question in one hop.
"""

from typing import Any

from executions import conf, history, policy
from executions.channels import ExecutionView, execution_channel
from executions.schemas import MAX_GRAPH_ID_LENGTH


def may_follow_graph(user: Any, graph_id: str) -> bool:
    """Whether the user may follow a graph's events (EXECUTIONS_SUBSCRIBE_POLICY)."""
    return len(graph_id) <= MAX_GRAPH_ID_LENGTH and bool(conf.subscribe_policy()(user, graph_id))


def execution_followed(user: Any, graph_exec_id: str) -> tuple[str, ExecutionView] | None:
    """The graph of an execution the user may follow, and the view of it they get.

    None for an execution nobody published yet and for one of a graph the user may not follow:
    the two are refused alike, so that nobody learns which executions exist. The view's channel
    is ``{user}|graph_exec#{id}``; node results published without a user_id carry the graph's
    owner, as AutoGPT's events of that graph would.
    """
    if len(graph_exec_id) > MAX_GRAPH_ID_LENGTH:
        return None
    graph_id = history.execution_graph(graph_exec_id)
    if graph_id is None or not may_follow_graph(user, graph_id):
        return None
    user_id = str(user.pk)
    channel = execution_channel(user_id, graph_exec_id)
    owner_id = policy.graph_owner_id(graph_id) or user_id
    return graph_id, ExecutionView(graph_exec_id, channel, owner_id)
