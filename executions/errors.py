"""The HTTP API's error answers, shared by the ninja routes and the ASGI ingest path."""

from typing import Any

from executions.exceptions import PublishNotDelivered

BAD_CREDENTIALS = "Missing or invalid credentials."
INGEST_DISABLED = (
    "Ingest is disabled: set the environment variable EXECUTIONS_INGEST_TOKEN on the server "
    "and send it as 'Authorization: Bearer <token>'."
)

# Path parts that name where ninja put the body or which branch of a union was tried.
# Parts of a pydantic error location that name no field: the body itself, a union's branch
# (the model, the list of it) and the tags that pick a branch.
_NOT_FIELDS = {"body", "payload", "result", "node_execution_update", "graph_execution_update"}
_BRANCH_PREFIXES = ("tagged-union[", "list[tagged-union[", "ExecutionResult", "list[")


def _names_a_field(part: Any) -> bool:
    if not isinstance(part, str):
        return True  # a list index
    return part not in _NOT_FIELDS and not part.startswith(_BRANCH_PREFIXES)


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """Name the bad field of a request body, as ``field.path: problem``.

    pydantic may report several failures (one per branch of a union, such as the tagged
    publishable types); the deepest one is the branch the client meant.
    """
    if not errors:
        return "Invalid request body."
    deepest = max(errors, key=lambda error: len(error.get("loc", ())))
    location = [str(part) for part in deepest.get("loc", ()) if _names_a_field(part)]
    where = ".".join(location) or "body"
    return f"Invalid request body: {where}: {deepest.get('msg', 'invalid value')}."


def not_delivered_body(exc: PublishNotDelivered) -> dict[str, Any]:
    return {
        "error": str(exc),
        "stored": [{"graph_id": event.graph_id, "seq": event.seq} for event in exc.undelivered],
    }


def body_too_large_message(limit: int) -> str:
    """The 413's error, whoever refuses the body (the app, or a server hook while it reads)."""
    return f"Request body too large: the limit here is {limit} bytes."
