"""Live execution updates for Django: workflow results streamed to WebSocket subscribers.

The public API, importable from here once Django is set up::

    from executions import ExecutionResult, ExecutionStatus, send_execution_result_sync

Names are loaded on first use, so importing the package (as INSTALLED_APPS does) loads no
models and touches no settings.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Each public name, and the module that defines it.
_EXPORTS = {
    "ExecutionResult": "executions.schemas",
    "ExecutionStatus": "executions.schemas",
    "GraphExecutionEvent": "executions.schemas",
    "NodeExecutionEvent": "executions.schemas",
    "PublishNotDelivered": "executions.exceptions",
    "send_execution_result": "executions.events",
    "send_execution_result_sync": "executions.events",
    "send_execution_results": "executions.events",
    "send_execution_results_sync": "executions.events",
    "send_graph_execution_event": "executions.events",
    "send_graph_execution_event_sync": "executions.events",
    "send_node_execution_event": "executions.events",
    "send_node_execution_event_sync": "executions.events",
}

__all__ = [
    "ExecutionResult",
    "ExecutionStatus",
    "GraphExecutionEvent",
    "NodeExecutionEvent",
    "PublishNotDelivered",
    "__version__",
    "send_execution_result",
    "send_execution_result_sync",
    "send_execution_results",
    "send_execution_results_sync",
    "send_graph_execution_event",
    "send_graph_execution_event_sync",
    "send_node_execution_event",
    "send_node_execution_event_sync",
]

if TYPE_CHECKING:
    from executions.events import (
        send_execution_result,
        send_execution_result_sync,
        send_execution_results,
        send_execution_results_sync,
        send_graph_execution_event,
        send_graph_execution_event_sync,
        send_node_execution_event,
        send_node_execution_event_sync,
    )
    from executions.exceptions import PublishNotDelivered
    from executions.schemas import (
        ExecutionResult,
        ExecutionStatus,
        GraphExecutionEvent,
        NodeExecutionEvent,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'executions' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
