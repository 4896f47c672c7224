"""Publishing execution results to every subscriber of their graph."""

from collections.abc import Iterable, Mapping
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from executions.groups import graph_group_name
from executions.schemas import EXECUTION_RESULT_EVENT, ExecutionResult, execution_event_frame

ResultLike = ExecutionResult | Mapping[str, Any]


def _validated(result: ResultLike) -> ExecutionResult:
    if isinstance(result, ExecutionResult):
        return result
    return ExecutionResult.model_validate(result)


def layer_event(result: ExecutionResult) -> dict[str, Any]:
    """Return the channel-layer message for a result: its frame, serialized once for all."""
    return {"type": EXECUTION_RESULT_EVENT, "frame": execution_event_frame(result)}


async def send_execution_result(result: ResultLike) -> None:
    """Validate a result and send it to every subscriber of its graph (none is fine)."""
    validated = _validated(result)
    layer = get_channel_layer()
    await layer.group_send(graph_group_name(validated.graph_id), layer_event(validated))


async def send_execution_results(results: Iterable[ResultLike]) -> int:
    """Validate every result first, then send them in order; return how many were sent."""
    validated = [_validated(result) for result in results]
    for result in validated:
        await send_execution_result(result)
    return len(validated)


def send_execution_result_sync(result: ResultLike) -> None:
    """The same as send_execution_result, for views, tasks and other synchronous code."""
    async_to_sync(send_execution_result)(result)


def send_execution_results_sync(results: Iterable[ResultLike]) -> int:
    """The same as send_execution_results, for synchronous code."""
    return async_to_sync(send_execution_results)(results)
