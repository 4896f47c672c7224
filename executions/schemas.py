"""Wire messages and execution results: the one definition of the protocol's shapes."""

from datetime import datetime
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
)
from pydantic_core import to_json

MAX_GRAPH_ID_LENGTH = 255


def _storable(text: str) -> str:
    """Refuse what no database column or JSON encoder takes: NUL, lone surrogates."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    if text.isascii():  # the usual id: no surrogate possible, nothing to encode
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode (no lone surrogates)") from exc
    return text


StoredId = Annotated[str, AfterValidator(_storable)]
GraphId = Annotated[
    StrictStr,
    Field(min_length=1, max_length=MAX_GRAPH_ID_LENGTH),
    AfterValidator(_storable),
]

# The channel-layer event that carries a ready-made frame to every subscriber.
EXECUTION_RESULT_EVENT = "execution.result"
# Consecutive events of one graph in one channel-layer message, under "events", in order.
EXECUTION_RESULTS_EVENT = "execution.results"


class ExecutionStatus(StrEnum):
    INCOMPLETE = "INCOMPLETE"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    TERMINATED = "TERMINATED"
    FAILED = "FAILED"


class ExecutionResult(BaseModel):
    """One node execution's state, as AutoGPT's executors report it."""

    graph_id: GraphId
    graph_version: int
    graph_exec_id: StoredId
    node_exec_id: StoredId
    node_id: StoredId
    block_id: StoredId
    status: ExecutionStatus
    input_data: dict[str, Any]
    output_data: dict[str, list[Any]]
    add_time: datetime
    queue_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None


class UserScoped(BaseModel):
    """The owner of an execution, first in AutoGPT's event models."""

    user_id: StoredId


class ExecutionEventType(StrEnum):
    GRAPH_EXEC_UPDATE = "graph_execution_update"
    NODE_EXEC_UPDATE = "node_execution_update"


class NodeExecutionEvent(ExecutionResult, UserScoped):
    """AutoGPT's node execution event: a result with its owner's id and the event type.

    Fields in AutoGPT's order: user_id, then the result's fields, then event_type (pydantic
    takes the bases' fields from the last base to the first).
    """

    event_type: Literal[ExecutionEventType.NODE_EXEC_UPDATE] = ExecutionEventType.NODE_EXEC_UPDATE

    def result(self) -> ExecutionResult:
        """The same node execution as the original protocol carries it."""
        return ExecutionResult.model_validate(self.model_dump(exclude={"user_id", "event_type"}))


class CredentialsMetaInput(BaseModel):
    id: str
    title: str | None = None
    provider: str
    type: str


class GraphExecutionStats(BaseModel):
    """A graph execution's totals, as AutoGPT reports them (and whatever else it adds)."""

    model_config = ConfigDict(extra="allow")

    # Integer defaults on float fields on purpose: unset, they serialize as 0, as AutoGPT's do.
    cost: int = 0
    duration: float = 0
    duration_cpu_only: float = 0
    node_exec_time: float = 0
    node_exec_time_cpu_only: float = 0
    node_exec_count: int = 0
    node_error_count: int = 0
    error: str | None = None
    activity_status: str | None = None
    correctness_score: float | None = None


class GraphExecutionEvent(BaseModel):
    """AutoGPT's graph execution event: one run of a graph, its status, inputs and outputs."""

    id: Annotated[StoredId, Field(min_length=1, max_length=MAX_GRAPH_ID_LENGTH)]
    user_id: StoredId
    graph_id: GraphId
    graph_version: int
    inputs: dict[str, Any]
    credential_inputs: dict[str, CredentialsMetaInput] | None = None
    nodes_input_masks: dict[str, dict[str, Any]] | None = None
    preset_id: str | None = None
    status: ExecutionStatus
    started_at: datetime
    ended_at: datetime
    is_shared: bool = False
    share_token: str | None = None
    stats: GraphExecutionStats | None = None
    outputs: dict[str, list[Any]]
    event_type: Literal[ExecutionEventType.GRAPH_EXEC_UPDATE] = ExecutionEventType.GRAPH_EXEC_UPDATE

    @property
    def graph_exec_id(self) -> str:
        return self.id


# What a publisher may send: a result (original protocol) or one of AutoGPT's events.
Publishable = ExecutionResult | NodeExecutionEvent | GraphExecutionEvent
PUBLISHABLE = (ExecutionResult, NodeExecutionEvent, GraphExecutionEvent)


def _publishable_kind(value: Any) -> str:
    """The tag of a publishable item: its event_type (an unknown one fails), else "result"."""
    if isinstance(value, dict):
        event_type = value.get("event_type")
    else:
        event_type = getattr(value, "event_type", None)
    return "result" if event_type is None else str(event_type)


# Validates JSON data as the model its "event_type" names (a result when there is none).
TaggedPublishable = Annotated[
    Annotated[ExecutionResult, Tag("result")]
    | Annotated[NodeExecutionEvent, Tag(ExecutionEventType.NODE_EXEC_UPDATE.value)]
    | Annotated[GraphExecutionEvent, Tag(ExecutionEventType.GRAPH_EXEC_UPDATE.value)],
    Discriminator(_publishable_kind),
]
PUBLISHABLE_ADAPTER: TypeAdapter[Publishable] = TypeAdapter(TaggedPublishable)


class Methods(Enum):
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    EXECUTION_EVENT = "execution_event"
    HEARTBEAT = "heartbeat"
    ERROR = "error"
    # AutoGPT's current protocol, on the same connection.
    SUBSCRIBE_GRAPH_EXEC = "subscribe_graph_execution"
    SUBSCRIBE_GRAPH_EXECS = "subscribe_graph_executions"
    GRAPH_EXECUTION_EVENT = "graph_execution_event"
    NODE_EXECUTION_EVENT = "node_execution_event"


class WsMessage(BaseModel):
    """The envelope of every frame, in both directions."""

    method: Methods
    data: dict[str, Any] | list[Any] | str | None = None
    success: bool | None = None
    channel: str | None = None
    error: str | None = None


# Where a subscription starts: after a sequence number (None: not a resume).
Since = Annotated[StrictInt, Field(ge=0)] | None


class Resumable:
    """A subscription request's way to start: after a number, from a snapshot, or live; with
    ``since`` or ``snapshot`` every event frame carries ``seq``.

    Each request declares the fields after its id, so that a missing id is the error reported.
    """

    if TYPE_CHECKING:  # declared for type checkers only: pydantic would make them fields first
        since: int | None
        snapshot: bool

    @property
    def numbered(self) -> bool:
        return self.since is not None or self.snapshot


class SubscriptionRequest(Resumable, BaseModel):
    """The ``data`` of a subscribe or unsubscribe message.

    ``since`` resumes after a sequence number; ``snapshot`` first sends the latest result of each
    node of the graph's most recent execution.
    """

    model_config = ConfigDict(extra="ignore")

    graph_id: GraphId
    since: Since = None
    snapshot: StrictBool = False


class ExecutionSubscriptionRequest(Resumable, BaseModel):
    """The ``data`` of subscribe_graph_execution (and of an unsubscribe that names an execution).

    AutoGPT's request is ``{"graph_exec_id"}``; ``since`` and ``snapshot`` work as in
    SubscriptionRequest, numbering the execution's events with its graph's sequence numbers.
    """

    model_config = ConfigDict(extra="ignore")

    graph_exec_id: GraphId
    since: Since = None
    snapshot: StrictBool = False


_EXECUTION_EVENT_HEAD = '{"method":"' + Methods.EXECUTION_EVENT.value + '","data":'


def execution_event_frame(result: ExecutionResult) -> str:
    """Return the exact text every subscriber of the result's graph receives: the bytes of
    ``WsMessage(method=EXECUTION_EVENT, channel=graph_id, data=result.model_dump())
    .model_dump_json()``, put together around the result's own JSON (a quarter of the time:
    no dict of the result built, then walked again)."""
    channel = to_json(result.graph_id).decode()
    # model_dump_json's own serializer, without its Python wrapper (a fifth of its time).
    data = result.__pydantic_serializer__.to_json(result).decode()
    return f'{_EXECUTION_EVENT_HEAD}{data},"success":null,"channel":{channel},"error":null}}'


class ClientMessage(BaseModel):
    """What the server reads of a client frame: the method and its data, nothing else."""

    model_config = ConfigDict(extra="ignore")

    method: Methods
    data: dict[str, Any] | list[Any] | str | None = None
