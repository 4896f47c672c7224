"""POST <api>/executions straight from ASGI: the hot publishing path, ahead of Django's stack.

Django runs each request's sync parts (middleware, signals) in threads made for the request;
for a service publishing results one by one that is most of the cost. This ASGI wrapper answers
the ingest route itself, wherever the URLconf mounts it, with the same checks, validation and
answers as the ninja route in api.py (which documents the endpoint and serves it wherever this
wrapper is not in front), and passes every other request to Django.
"""

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.urls import Resolver404, resolve
from django.utils.crypto import constant_time_compare
from pydantic import TypeAdapter, ValidationError

from executions import conf
from executions.errors import (
    BAD_CREDENTIALS,
    INGEST_DISABLED,
    body_too_large_message,
    describe_validation_errors,
    not_delivered_body,
)
from executions.events import send_execution_results
from executions.exceptions import BatchNotStored, PublishNotDelivered
from executions.schemas import (
    PUBLISHABLE_ADAPTER,
    ExecutionResult,
    Publishable,
    TaggedPublishable,
)
from executions.scope import bearer_token, declares_more_than, header, path_info

INGEST_URL_NAME = "ingest"
API_NAMESPACE = "executions-api"
# One item or a list: results, AutoGPT's node and graph execution events, mixed at will. A list
# and a single item are told apart by the body's first character, not by a union of the two:
# pydantic's union tries a strict pass before the lax one, which validated each result twice
# (1.2 of 3.9 us per result of a batch).
_items: TypeAdapter[list[Publishable]] = TypeAdapter(list[TaggedPublishable])

# The same for a body of results only, validated without the tag's Python call per item (a third
# of the validation's time): one that names no "event_type" and holds no \u escape that could.
_results: TypeAdapter[list[ExecutionResult]] = TypeAdapter(list[ExecutionResult])
_result: TypeAdapter[ExecutionResult] = TypeAdapter(ExecutionResult)

_STARTS_A_LIST = re.compile(rb"[ \t\n\r]*\[")

Reply = tuple[int, dict[str, Any]]


def _validated(body: bytes) -> Sequence[Publishable]:
    many = _STARTS_A_LIST.match(body) is not None
    # A backslash is found at memchr's speed; a two-byte needle takes 100 times as long.
    if b"event_type" not in body and (b"\\" not in body or b"\\u" not in body):
        return _results.validate_json(body) if many else [_result.validate_json(body)]
    return _items.validate_json(body) if many else [PUBLISHABLE_ADAPTER.validate_json(body)]


def token_refusal(authorization: str) -> Reply | None:
    """The answer for a request whose bearer token does not open the ingest, else None."""
    expected = conf.get("EXECUTIONS_INGEST_TOKEN")
    if not expected:
        return 403, {"error": INGEST_DISABLED}
    token = bearer_token(authorization)
    if not token or not constant_time_compare(token, expected):
        return 401, {"error": BAD_CREDENTIALS}
    return None


async def ingest(body: bytes) -> Reply:
    """Validate and publish one authorized request's results; return the status and JSON body."""
    try:
        results = _validated(body)
    except ValidationError as exc:
        return 400, {"error": describe_validation_errors(exc.errors())}  # type: ignore[arg-type]
    try:
        accepted = await send_execution_results(results, outside_any_transaction=True)
    except PublishNotDelivered as exc:
        return 503, not_delivered_body(exc)
    except BatchNotStored as exc:
        return 503, {"error": str(exc)}
    return 202, {"accepted": len(accepted)}


class IngestEndpoint:
    """ASGI middleware: serves ``POST /api/executions`` itself, hands the rest to `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not is_ingest_path(scope):
            await self.app(scope, receive, send)
            return
        # The token first: a client without it is answered before a byte of its body is read
        # (and the connection closed, since the body stays unread).
        authorization = header(scope, b"authorization")
        refusal = token_refusal(authorization)
        if refusal is not None:
            await _respond(send, *refusal, close=True)
            return
        limit = int(conf.get("EXECUTIONS_MAX_INGEST_BYTES"))
        body: bytes | None = None
        if not declares_more_than(header(scope, b"content-length"), limit):
            try:
                body = await _read_body(receive, limit)
            except ClientGone:
                return  # nobody to answer, and a partial body is never published
        if body is None:
            await _respond(send, 413, {"error": body_too_large_message(limit)}, close=True)
            return
        await _respond(send, *await ingest(body))


def is_ingest_path(scope: dict[str, Any]) -> bool:
    """True when the request's path is the ingest route of the site's URLconf."""
    return resolves_to_ingest(path_info(scope))


@lru_cache(maxsize=256)
def resolves_to_ingest(path: str) -> bool:
    """True when `path` (below any root path) is the ingest route of the site's URLconf."""
    try:
        match = resolve(path)
    except Resolver404:
        return False
    return match.url_name == INGEST_URL_NAME and API_NAMESPACE in match.namespaces


@receiver(setting_changed)
def _forget_resolved_paths(*, setting: str, **kwargs: Any) -> None:
    if setting == "ROOT_URLCONF":
        resolves_to_ingest.cache_clear()


class ClientGone(Exception):
    """The client disconnected before it had sent the whole body."""


async def _read_body(receive: Any, limit: int | None) -> bytes | None:
    """The whole request body, or None once it passes `limit` bytes; ClientGone if the client
    disconnects first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Any, status: int, reply: dict[str, Any], close: bool = False) -> None:
    content = json.dumps(reply).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
