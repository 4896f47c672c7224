"""The HTTP API: ingest of execution results, and WebSocket tokens for logged-in users."""

import functools
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer, django_auth
from pydantic import Field

from executions import conf, history
from executions.errors import (
    BAD_CREDENTIALS,
    INGEST_DISABLED,
    body_too_large_message,
    describe_validation_errors,
    not_delivered_body,
)
from executions.events import send_execution_results
from executions.exceptions import BatchNotStored, ExecutionsError, PublishNotDelivered
from executions.following import may_follow_graph
from executions.ingest import token_refusal
from executions.schemas import TaggedPublishable
from executions.scope import declares_more_than
from executions.tokens import mint_token, user_for_token

logger = logging.getLogger(__name__)


def docs_when_enabled(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The API docs and the OpenAPI schema, served only while conf.api_docs_enabled()
    (EXECUTIONS_API_DOCS, or DEBUG when it is None); 404 otherwise. Decided per request, so
    a changed setting needs no new URLconf."""

    @functools.wraps(view)
    def served_when_enabled(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not conf.api_docs_enabled():
            raise Http404("The API docs are off: set EXECUTIONS_API_DOCS = True to serve them.")
        return view(request, *args, **kwargs)

    return served_when_enabled


api = NinjaAPI(
    title="Executions API",
    version="1.0",
    description="Publish execution results to their graph's WebSocket subscribers.",
    urls_namespace="executions-api",
    docs_decorator=docs_when_enabled,
)


class IngestDisabled(Exception):
    """No EXECUTIONS_INGEST_TOKEN is configured, so nobody may publish over HTTP."""


class IngestBodyTooLarge(Exception):
    """The body announces more than EXECUTIONS_MAX_INGEST_BYTES."""

    def __init__(self, limit: int) -> None:
        super().__init__(body_too_large_message(limit))


class IngestToken(HttpBearer):
    """``Authorization: Bearer <EXECUTIONS_INGEST_TOKEN>``, compared in constant time; then
    the body's announced size (checked here, before ninja reads the body)."""

    def __call__(self, request: HttpRequest) -> Any:
        refusal = token_refusal(request.headers.get(self.header, ""))
        if refusal is None:
            limit = int(conf.get("EXECUTIONS_MAX_INGEST_BYTES"))
            if declares_more_than(request.headers.get("Content-Length", ""), limit):
                raise IngestBodyTooLarge(limit)
            return True
        if refusal[0] == 403:
            raise IngestDisabled
        return None

    def authenticate(self, request: HttpRequest, token: str) -> Any:  # pragma: no cover
        raise NotImplementedError("IngestToken checks the header itself, in __call__.")


class UserToken(HttpBearer):
    """``Authorization: Bearer <token>`` with a token from ws_token or POST /api/ws-token."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        try:
            return user_for_token(token)
        except ExecutionsError:
            return None


class Accepted(Schema):
    accepted: int


class ErrorBody(Schema):
    error: str


class WsToken(Schema):
    token: str
    expires_at: datetime


@api.post(
    "/executions",
    url_name="ingest",
    auth=IngestToken(),
    response={202: Accepted, 400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 413: ErrorBody},
    summary="Publish one execution result or AutoGPT event, or an array of them",
)
async def ingest_executions(
    request: HttpRequest, payload: TaggedPublishable | list[TaggedPublishable]
) -> Status[dict[str, int]]:
    results = payload if isinstance(payload, list) else [payload]
    accepted = await send_execution_results(results, outside_any_transaction=True)
    return Status(202, {"accepted": len(accepted)})


@api.post(
    "/ws-token",
    url_name="ws-token",
    auth=django_auth,
    response={200: WsToken, 401: ErrorBody},
    summary="Mint a WebSocket token for the logged-in user",
)
def create_ws_token(request: HttpRequest) -> dict[str, Any]:
    issued = mint_token(request.user)  # type: ignore[arg-type]
    return {"token": issued.token, "expires_at": issued.expires_at}


class HistoryEvent(Schema):
    seq: int
    result: dict[str, Any]


class HistoryPage(Schema):
    graph_id: str
    head: int
    oldest: int
    truncated: bool
    next_since: int
    events: list[HistoryEvent]


class HistoryQuery(Schema):
    since: int = Field(0, ge=0, description="Return events numbered after this one.")
    limit: int = Field(100, ge=1, le=1000, description="At most this many events.")


@api.get(
    "/graphs/{path:graph_id}/executions",
    auth=[django_auth, UserToken()],
    response={200: HistoryPage, 400: ErrorBody, 401: ErrorBody, 403: ErrorBody},
    summary="Read a graph's stored execution events, oldest first",
)
def graph_history(
    request: HttpRequest, graph_id: str, query: Query[HistoryQuery]
) -> dict[str, Any] | Status[dict[str, str]]:
    user = request.auth  # type: ignore[attr-defined]
    if not may_follow_graph(user, graph_id):
        return Status(403, {"error": "Not allowed to read this graph."})
    position = history.position(graph_id)
    events = history.events_after(graph_id, query.since, query.limit)
    return {
        "graph_id": graph_id,
        "head": position.head,
        "oldest": position.oldest,
        "truncated": position.is_truncated_after(query.since),
        "next_since": events[-1].seq if events else query.since,
        "events": [{"seq": event.seq, "result": event.result()} for event in events],
    }


@api.exception_handler(ValidationError)
def invalid_body(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return api.create_response(
        request, {"error": describe_validation_errors(exc.errors)}, status=400
    )


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return api.create_response(request, {"error": str(exc)}, status=exc.status_code)


@api.exception_handler(AuthenticationError)
def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return api.create_response(request, {"error": BAD_CREDENTIALS}, status=401)


@api.exception_handler(PublishNotDelivered)
def layer_down(request: HttpRequest, exc: PublishNotDelivered) -> HttpResponse:
    return api.create_response(request, not_delivered_body(exc), status=503)


@api.exception_handler(BatchNotStored)
def batch_not_stored(request: HttpRequest, exc: BatchNotStored) -> HttpResponse:
    return api.create_response(request, {"error": str(exc)}, status=503)


@api.exception_handler(IngestDisabled)
def ingest_disabled(request: HttpRequest, exc: IngestDisabled) -> HttpResponse:
    return api.create_response(request, {"error": INGEST_DISABLED}, status=403)


@api.exception_handler(IngestBodyTooLarge)
def ingest_body_too_large(request: HttpRequest, exc: IngestBodyTooLarge) -> HttpResponse:
    return api.create_response(request, {"error": str(exc)}, status=413)
