"""ASGI middleware that decides who is on the other end of a WebSocket."""

from typing import Any, Final
from urllib.parse import parse_qs

from channels.auth import get_user
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

from executions.exceptions import ExecutionsError
from executions.origins import ExactOriginValidator
from executions.revocation import TOKEN_KEY, session_store
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


class WebSocketAuthentication:
    """Who is on the other end of a WebSocket, set in one copy of the scope.

    A token, when offered, decides alone (``token_from_scope``); otherwise the Django session
    of the request's cookie does, as channels' ``AuthMiddlewareStack`` would: ``cookies``,
    ``session`` and ``user`` are the same keys with the same values. One copy instead of that
    stack's four: each middleware's copy stays referenced by its suspended coroutine for the
    connection's whole life, about a kilobyte per copy per socket.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        scope = dict(scope)
        cookies = _cookies(scope)
        scope["cookies"] = cookies
        scope["session"] = session_store()(cookies.get(settings.SESSION_COOKIE_NAME))
        token = token_from_scope(scope)
        if not token:
            scope["user"] = await get_user(scope)
            return await self.app(scope, receive, send)
        try:
            verified = await database_sync_to_async(verify_token)(token)
        except ExecutionsError as exc:
            scope.update({"user": AnonymousUser(), AUTH_ERROR_KEY: str(exc)})
        else:
            scope.update({"user": verified.user, TOKEN_KEY: verified, AUTH_ERROR_KEY: None})
        return await self.app(scope, receive, send)


def _cookies(scope: Scope) -> dict[str, str]:
    """The request's cookies as Django's ``request.COOKIES`` has them (the first header)."""
    for name, value in scope["headers"]:
        if name == b"cookie":
            return parse_cookie(value.decode("latin1"))
    return {}


def websocket_auth_stack(app: ASGIApp) -> ASGIApp:
    """Wrap a WebSocket app in origin checks (executions.origins), then authentication."""
    return ExactOriginValidator(WebSocketAuthentication(app))
