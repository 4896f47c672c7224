"""Reading an ASGI scope the way Django reads a request: its path below the root, its headers."""

from typing import Any

Scope = dict[str, Any]


def path_info(scope: Scope) -> str:
    """The path the URLconf sees: below the server's ``root_path``, as Django's handler does."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    return path or "/"


def header(scope: Scope, name: bytes) -> str:
    """The first value of a header (`name` in lower case), or ""."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def declares_more_than(content_length: str, limit: int) -> bool:
    """Whether a ``Content-Length`` value announces a body over `limit` bytes.

    Only ASCII digits count (``str.isdigit`` also takes digits such as "²", which ``int``
    refuses); anything else announces nothing, and the body is counted as it arrives.
    """
    value = content_length.strip()
    return value.isascii() and value.isdigit() and int(value) > limit


def bearer_token(authorization: str) -> str:
    """The credentials of an ``Authorization: Bearer <token>`` value, or "" for any other."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""
