"""Decoding client frames into validated messages, or a ProtocolViolation that says why not."""

import json
from typing import Any

from pydantic import ValidationError

from executions.protocol import ErrorText, ProtocolViolation
from executions.schemas import ClientMessage, ExecutionSubscriptionRequest, SubscriptionRequest


def decode_client_message(text: str) -> ClientMessage:
    """Parse one text frame into a client message."""
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also: huge integers, absurd nesting
        raise ProtocolViolation("not_json", ErrorText.NOT_JSON) from exc
    if not isinstance(payload, dict):
        raise ProtocolViolation("not_object", ErrorText.NOT_OBJECT)
    try:
        return ClientMessage.model_validate(payload)
    except ValidationError as exc:
        field = exc.errors()[0]["loc"][0]
        if field == "method":
            raise ProtocolViolation("unknown_method", ErrorText.UNKNOWN_METHOD) from exc
        raise ProtocolViolation(
            "invalid_data",
            "data must be an object, an array, a string or null.",
            _named_graph_id(payload.get("data")),
        ) from exc


def subscription_request(message: ClientMessage) -> SubscriptionRequest:
    """Validate the data of a subscribe or unsubscribe message."""
    if not message.data or not isinstance(message.data, dict) or "graph_id" not in message.data:
        raise ProtocolViolation("subscription_data_missing", ErrorText.SUBSCRIPTION_DATA_MISSING)
    try:
        return SubscriptionRequest.model_validate(message.data)
    except ValidationError as exc:
        field = exc.errors()[0]["loc"][0]
        error = _FIELD_ERRORS.get(str(field), ErrorText.INVALID_GRAPH_ID)
        raise ProtocolViolation(
            "invalid_subscription", error, _named_graph_id(message.data)
        ) from exc


def execution_subscription_request(message: ClientMessage) -> ExecutionSubscriptionRequest:
    """Validate the data of a subscribe_graph_execution (or an unsubscribe naming an execution)."""
    data = message.data
    if not data or not isinstance(data, dict) or "graph_exec_id" not in data:
        raise ProtocolViolation("subscription_data_missing", ErrorText.SUBSCRIPTION_DATA_MISSING)
    try:
        return ExecutionSubscriptionRequest.model_validate(data)
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        error = _FIELD_ERRORS.get(field, ErrorText.INVALID_GRAPH_EXEC_ID)
        raise ProtocolViolation("invalid_subscription", error) from exc


def _named_graph_id(data: Any) -> str | None:
    """Return the graph id a frame names, when it is one the protocol could accept."""
    if not isinstance(data, dict):
        return None
    try:
        return SubscriptionRequest.model_validate({"graph_id": data.get("graph_id")}).graph_id
    except ValidationError:
        return None


_FIELD_ERRORS = {
    "graph_id": ErrorText.INVALID_GRAPH_ID,
    "graph_exec_id": ErrorText.INVALID_GRAPH_EXEC_ID,
    "since": ErrorText.INVALID_SINCE,
    "snapshot": ErrorText.INVALID_SNAPSHOT,
}
