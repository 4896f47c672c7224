"""ASGI middleware that decides who is on the other end of a WebSocket."""

from typing import Any, Final
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser

from executions.exceptions import ExecutionsError
from executions.origins import ExactOriginValidator
from executions.revocation import TOKEN_KEY
from executions.scope import bearer_token
from executions.tokens import verify_token

Scope = dict[str, Any]
ASGIApp = Any

# Set in the scope when a token was offered and refused; the consumer closes with it.
AUTH_ERROR_KEY = "executions_auth_error"


# The subprotocol of the stream, which the server accepts when the client offers it; and the
# prefix of the one that carries a token (browsers can set no header on a WebSocket).
SUBPROTOCOL: Final = "executions"
BEARER_SUBPROTOCOL_PREFIX: Final = "executions.bearer."


def token_from_scope(scope: Scope) -> str:
    """The token the client offered, or "" when none; an empty value counts as none.

    From the first of: an ``Authorization: Bearer TOKEN`` header, an offered subprotocol
    ``executions.bearer.TOKEN``, the ``token`` query parameter. Only the first one given is
    checked: an invalid header token is refused even with a valid ``?token=``.
    """
    return (
        _token_from_authorization(scope)
        or _token_from_subprotocols(scope)
        or _token_from_query(scope)
    )


def _token_from_authorization(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if bytes(name).lower() != b"authorization":
            continue
        token = bearer_token(bytes(value).decode("latin-1"))
        if token:
            return token
    return ""


def _token_from_subprotocols(scope: Scope) -> str:
    for subprotocol in scope.get("subprotocols") or ():
        token = str(subprotocol).removeprefix(BEARER_SUBPROTOCOL_PREFIX)
        if token and token != subprotocol:
            return token
    return ""


def _token_from_query(scope: Scope) -> str:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("token") or [""]
    return values[0]


def chosen_subprotocol(scope: Scope) -> str | None:
    """The subprotocol to accept: ``executions`` when the client offered it, else none.

    Never the ``executions.bearer.`` one: the handshake's answer would echo the token.
    """
    return SUBPROTOCOL if SUBPROTOCOL in (scope.get("subprotocols") or ()) else None


class TokenAuthMiddleware:
    """Authenticate programs by token (``token_from_scope``); a token, when given, wins over
    the session."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        token = token_from_scope(scope)
        if token:
            try:
                verified = await database_sync_to_async(verify_token)(token)
                scope = {**scope, "user": verified.user, TOKEN_KEY: verified, AUTH_ERROR_KEY: None}
            except ExecutionsError as exc:
                scope = {**scope, "user": AnonymousUser(), AUTH_ERROR_KEY: str(exc)}
        return await self.app(scope, receive, send)


def websocket_auth_stack(app: ASGIApp) -> ASGIApp:
    """Wrap a WebSocket app in origin checks (executions.origins), session auth and token auth,
    in that order."""
    return ExactOriginValidator(AuthMiddlewareStack(TokenAuthMiddleware(app)))
