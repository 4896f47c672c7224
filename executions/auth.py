"""ASGI middleware that decides who is on the other end of a WebSocket."""

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser

from executions.exceptions import ExecutionsError
from executions.origins import ExactOriginValidator
from executions.revocation import TOKEN_KEY
from executions.tokens import verify_token

Scope = dict[str, Any]
ASGIApp = Any

# Set in the scope when a token was offered and refused; the consumer closes with it.
AUTH_ERROR_KEY = "executions_auth_error"


def token_from_scope(scope: Scope) -> str:
    """Return the ``token`` query parameter, or "" when absent or empty."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("token") or [""]
    return values[0]


class TokenAuthMiddleware:
    """Authenticate programs by ``?token=``; a token, when given, wins over the session."""

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
