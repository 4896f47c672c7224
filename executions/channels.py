"""What each kind of subscription shows of a graph's stream, and the exact frames it gets.

A graph's stream (executions.history) holds node results and graph execution events, numbered
together. A subscription follows one graph's stream through a view:

- ``subscribe {graph_id}`` (the original protocol): every node result, as ``execution_event``
  frames whose channel is the graph id;
- ``subscribe_graph_execution {graph_exec_id}`` (AutoGPT's current protocol): the node results
  and graph events of one execution, as ``node_execution_event`` / ``graph_execution_event``
  frames on the channel ``{user_id}|graph_exec#{graph_exec_id}``;
- ``subscribe_graph_executions {graph_id}``: the graph execution events of every execution of the
  graph, on ``{user_id}|graph#{graph_id}|executions``.

AutoGPT's frames are ``WSMessage(method, channel, data=event.model_dump()).model_dump_json()``.
They are not built per subscriber from models: the stored frame is spliced (its data is already
the JSON AutoGPT's serializer makes), which keeps a fan-out to many subscribers one string
operation each, cached across them.
"""

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from pydantic_core import to_json

from executions.protocol import CACHED_FRAME_LIMIT, CACHED_FRAMES
from executions.schemas import ExecutionEventType, Methods


class Kind:
    """What a stored event is (ExecutionEvent.kind)."""

    RESULT: Final = "result"  # published as an ExecutionResult
    NODE: Final = "node"  # published as AutoGPT's NodeExecutionEvent (carries its user_id)
    GRAPH: Final = "graph"  # AutoGPT's GraphExecutionEvent


def execution_channel(user_id: str, graph_exec_id: str) -> str:
    return f"{user_id}|graph_exec#{graph_exec_id}"


def graph_executions_channel(user_id: str, graph_id: str) -> str:
    return f"{user_id}|graph#{graph_id}|executions"


def _json(text: str) -> str:
    # The very encoder pydantic's model_dump_json uses for a str.
    return to_json(text).decode()


_RESULT_HEAD = '{"method":"' + Methods.EXECUTION_EVENT.value + '","data":'
_ENVELOPE_TAIL = ',"success":null,"channel":'
_NO_CHANNEL_TAIL = _ENVELOPE_TAIL + 'null,"error":null}'
_NODE_HEAD = '{"method":"' + Methods.NODE_EXECUTION_EVENT.value + '","data":{"user_id":'
_NODE_TAIL = ',"event_type":"' + ExecutionEventType.NODE_EXEC_UPDATE.value + '"}'


def _node_event_frame(result_frame: str, user_id: str, channel: str) -> str:
    """A ``node_execution_event`` frame from an ``execution_event`` frame of the same result.

    The result's fields sit between the data's braces, in the order NodeExecutionEvent keeps
    after ``user_id``; the envelope's own tail is the last ``,"success":null,"channel":`` (a
    JSON string cannot hold that sequence unescaped, and data comes before it).
    """
    fields = result_frame[len(_RESULT_HEAD) + 1 : result_frame.rindex(_ENVELOPE_TAIL) - 1]
    return (
        f"{_NODE_HEAD}{_json(user_id)},{fields}{_NODE_TAIL}"
        f'{_ENVELOPE_TAIL}{_json(channel)},"error":null}}'
    )


def _on_channel(frame: str, channel: str) -> str:
    """A frame stored without a channel (``"channel":null``), addressed to `channel`."""
    return f'{frame[: -len(_NO_CHANNEL_TAIL)]}{_ENVELOPE_TAIL}{_json(channel)},"error":null}}'


_cached_node_event_frame = functools.lru_cache(maxsize=CACHED_FRAMES)(_node_event_frame)
_cached_on_channel = functools.lru_cache(maxsize=CACHED_FRAMES)(_on_channel)


def node_event_frame(result_frame: str, user_id: str, channel: str) -> str:
    if len(result_frame) > CACHED_FRAME_LIMIT:
        return _node_event_frame(result_frame, user_id, channel)
    return _cached_node_event_frame(result_frame, user_id, channel)


def on_channel(frame: str, channel: str) -> str:
    if len(frame) > CACHED_FRAME_LIMIT:
        return _on_channel(frame, channel)
    return _cached_on_channel(frame, channel)


class View(Protocol):
    """A subscription's part of its graph's stream."""

    def render(self, event: Mapping[str, Any]) -> str | None:
        """The frame this subscription gets for a stream event, or None for none."""


@dataclass(frozen=True, slots=True)
class GraphView:
    """``subscribe``: every node result of the graph, as the original protocol sends it."""

    def render(self, event: Mapping[str, Any]) -> str | None:
        if event.get("kind") == Kind.GRAPH:
            return None
        frame: str = event["frame"]
        return frame


@dataclass(frozen=True, slots=True)
class ExecutionView:
    """``subscribe_graph_execution``: one execution's node results and graph events."""

    graph_exec_id: str
    channel: str
    # The user_id of node results published without one: the graph's owner.
    owner_id: str

    def render(self, event: Mapping[str, Any]) -> str | None:
        if event.get("graph_exec_id") != self.graph_exec_id:
            return None
        if event.get("kind") == Kind.GRAPH:
            return on_channel(event["frame"], self.channel)
        return node_event_frame(event["frame"], event.get("user_id") or self.owner_id, self.channel)


@dataclass(frozen=True, slots=True)
class GraphExecutionsView:
    """``subscribe_graph_executions``: the graph events of every execution of the graph."""

    channel: str

    def render(self, event: Mapping[str, Any]) -> str | None:
        if event.get("kind") != Kind.GRAPH:
            return None
        return on_channel(event["frame"], self.channel)
