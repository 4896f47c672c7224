"""Wire messages and execution results: the one definition of the protocol's shapes."""

from datetime import datetime
from enum import Enum, StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
)

MAX_GRAPH_ID_LENGTH = 255


def _storable(text: str) -> str:
    """Refuse what no database column or JSON encoder takes: NUL, lone surrogates."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
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


class ExecutionStatus(StrEnum):
    INCOMPLETE = "INCOMPLETE"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
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


class Methods(Enum):
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    EXECUTION_EVENT = "execution_event"
    HEARTBEAT = "heartbeat"
    ERROR = "error"


class WsMessage(BaseModel):
    """The envelope of every frame, in both directions."""

    method: Methods
    data: dict[str, Any] | list[Any] | str | None = None
    success: bool | None = None
    channel: str | None = None
    error: str | None = None


class SubscriptionRequest(BaseModel):
    """The ``data`` of a subscribe or unsubscribe message.

    ``since`` resumes after a sequence number; ``snapshot`` first sends the latest result of each
    node of the graph's most recent execution. Either makes every event frame carry ``seq``.
    """

    model_config = ConfigDict(extra="ignore")

    graph_id: GraphId
    since: Annotated[StrictInt, Field(ge=0)] | None = None
    snapshot: StrictBool = False

    @property
    def numbered(self) -> bool:
        return self.since is not None or self.snapshot


def execution_event_frame(result: ExecutionResult) -> str:
    """Return the exact text every subscriber of the result's graph receives."""
    return WsMessage(
        method=Methods.EXECUTION_EVENT, channel=result.graph_id, data=result.model_dump()
    ).model_dump_json()


class ClientMessage(BaseModel):
    """What the server reads of a client frame: the method and its data, nothing else."""

    model_config = ConfigDict(extra="ignore")

    method: Methods
    data: dict[str, Any] | list[Any] | str | None = None
