"""The execution_event frame is WsMessage's own JSON, whatever the result holds.

``execution_event_frame`` puts the frame together around the result's JSON instead of dumping
a WsMessage; these properties hold it to the model's bytes for any result and any graph id,
including non-ASCII text, control characters, quotes and backslashes.
"""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from executions.schemas import (
    MAX_GRAPH_ID_LENGTH,
    ExecutionResult,
    ExecutionStatus,
    Methods,
    WsMessage,
    execution_event_frame,
)

# Text a JSON encoder must escape or pass through: quotes, backslashes, controls, non-ASCII;
# finite numbers only (JSON has no infinity: both encoders write null).
_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
# Aware in UTC, at another offset, or naive: each is written as given.
_times = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.none()
    | st.just(UTC)
    | st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    ),
)


@st.composite
def results(draw: st.DrawFn) -> ExecutionResult:
    fields: dict[str, Any] = {
        "graph_id": draw(_text.filter(bool).map(lambda text: text[:MAX_GRAPH_ID_LENGTH])),
        "graph_version": draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        "graph_exec_id": draw(_text),
        "node_exec_id": draw(_text),
        "node_id": draw(_text),
        "block_id": draw(_text),
        "status": draw(st.sampled_from(ExecutionStatus)),
        "input_data": draw(st.dictionaries(_text, _json_values, max_size=3)),
        "output_data": draw(st.dictionaries(_text, st.lists(_json_values, max_size=3), max_size=3)),
        "add_time": draw(_times),
        "queue_time": draw(st.none() | _times),
        "start_time": draw(st.none() | _times),
        "end_time": draw(st.none() | _times),
    }
    return ExecutionResult.model_validate(fields)


@given(results())
def test_the_frame_is_the_bytes_of_a_dumped_ws_message(result: ExecutionResult) -> None:
    dumped = WsMessage(
        method=Methods.EXECUTION_EVENT, channel=result.graph_id, data=result.model_dump()
    ).model_dump_json()

    assert execution_event_frame(result) == dumped


@given(results())
def test_the_frame_reads_back_as_the_same_result(result: ExecutionResult) -> None:
    message = WsMessage.model_validate_json(execution_event_frame(result))

    assert message.method == Methods.EXECUTION_EVENT
    assert message.channel == result.graph_id
    assert ExecutionResult.model_validate(message.data) == result
