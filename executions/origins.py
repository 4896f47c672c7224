"""Exact WebSocket origins: a browser may connect from this site's own origin, or a listed one.

A browser sends ``Origin: scheme://host[:port]`` on every WebSocket handshake, and sends the
site's cookies with it whichever page opened the socket: without this check any page, on any
site or on another port of the same host, could use a logged-in user's session (cross-site
WebSocket hijacking). The origin must equal, scheme, host and port, either

- the origin of the request itself: its ``Host`` header (``X-Forwarded-Host`` under
  ``USE_X_FORWARDED_HOST``), valid for ``ALLOWED_HOSTS`` as Django checks it, and its scheme
  (``ws`` is ``http``, ``wss`` is ``https``, or what ``SECURE_PROXY_SSL_HEADER`` says behind a
  TLS-terminating proxy), or
- one of ``EXECUTIONS_ALLOWED_ORIGINS``, full origins such as ``"https://app.example.com"``.

Default ports count as given (``http://h:80`` is ``http://h``). Host names are compared whole:
no wildcard, no subdomain, and ``ALLOWED_HOSTS = ["*"]`` only means that any host the request
names is its own. A handshake without any ``Origin`` comes from a program, not a browser: no
cookie of a victim comes with it, so it goes on and has to authenticate like any other.
"""

import logging
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host

Scope = dict[str, Any]
ASGIApp = Any

logger = logging.getLogger("executions.origins")

DEFAULT_PORTS = {"http": 80, "https": 443}
ORIGIN_LISTS = (list, tuple, set, frozenset)
HTTP_SCHEME_OF = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
# The host grammar Django accepts in a Host header: a name or address, or a bracketed IPv6.
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>[a-z0-9.-]+|\[[a-f0-9]*:[a-f0-9.:]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


@dataclass(frozen=True, slots=True)
class Origin:
    """``scheme://host:port``, lower case, the port always given (None for unknown schemes)."""

    scheme: str
    host: str
    port: int | None

    def __str__(self) -> str:
        default = DEFAULT_PORTS.get(self.scheme)
        port = "" if self.port is None or self.port == default else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}"


def parse_origin(text: str) -> Origin | None:
    """`text` as an origin (``scheme://host[:port]`` and nothing else), or None.

    None for ``null``, a path (even ``/``), a query, user info, a wildcard, spaces, a port out
    of range, or a host Django would refuse in a Host header (non-ASCII: use its punycode).
    """
    match = _ORIGIN.fullmatch(text.lower())
    if match is None:
        return None
    scheme, host, port_text = match["scheme"], match["host"], match["port"]
    if port_text is None:
        return Origin(scheme, host, DEFAULT_PORTS.get(scheme))
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    return Origin(scheme, host, port)


def _headers(scope: Scope, meta_name: str) -> list[str]:
    """The values of the header Django would name `meta_name` in ``request.META``."""
    values = []
    for key, value in scope.get("headers", ()):
        name = bytes(key).decode("latin-1")
        # Django drops names with an underscore (a client could spoof a proxy's header).
        if "_" not in name and "HTTP_" + name.upper().replace("-", "_") == meta_name:
            values.append(bytes(value).decode("latin-1"))
    return values


def _header(scope: Scope, meta_name: str) -> str | None:
    # Django joins repeated headers with commas; so does this (a repeated Host is then invalid).
    values = _headers(scope, meta_name)
    return ",".join(values) if values else None


def request_scheme(scope: Scope) -> str:
    """``http`` or ``https``: the scheme Django's ``request.scheme`` gives this handshake."""
    proxy_header = settings.SECURE_PROXY_SSL_HEADER
    if proxy_header:
        name, secure_value = proxy_header
        value = _header(scope, name)
        if value is not None:
            return "https" if value.split(",", 1)[0].strip() == secure_value else "http"
    return HTTP_SCHEME_OF.get(str(scope.get("scheme") or "ws"), "http")


def request_host(scope: Scope) -> str | None:
    """The request's host and port, as Django's ``request.get_host()``; None if not allowed."""
    host = None
    if settings.USE_X_FORWARDED_HOST:
        host = _header(scope, "HTTP_X_FORWARDED_HOST")
    if host is None:
        host = _header(scope, "HTTP_HOST")
    if host is None:
        return None
    allowed_hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, allowed_hosts):
        return None
    return host


def request_origin(scope: Scope) -> Origin | None:
    """The origin of the handshake itself, or None without a valid, allowed Host."""
    host = request_host(scope)
    if host is None:
        return None
    return parse_origin(f"{request_scheme(scope)}://{host}")


def configured_origins() -> list[Origin]:
    """``EXECUTIONS_ALLOWED_ORIGINS``, parsed; an entry that is not an origin never matches
    (the system check ``executions.E002`` reports it)."""
    from executions import conf

    entries = conf.get("EXECUTIONS_ALLOWED_ORIGINS")
    if not isinstance(entries, ORIGIN_LISTS):
        return []
    return [origin for entry in entries if (origin := _parse_entry(entry)) is not None]


def _parse_entry(entry: object) -> Origin | None:
    return parse_origin(entry) if isinstance(entry, str) else None


def origin_allowed(scope: Scope, origin_header: str) -> bool:
    """True when the Origin header names the request's own origin or a configured one."""
    origin = parse_origin(origin_header)
    if origin is None:
        return False
    return origin == request_origin(scope) or origin in configured_origins()


def origin_headers(scope: Scope) -> list[str]:
    return _headers(scope, "HTTP_ORIGIN")


class ExactOriginValidator:
    """ASGI middleware: refuse (403 at the handshake) a browser whose Origin is not allowed.

    More than one Origin header is refused too; none at all is let through (a program).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("ExactOriginValidator guards WebSocket connections only.")
        origins = origin_headers(scope)
        if not origins or (len(origins) == 1 and origin_allowed(scope, origins[0])):
            return await self.app(scope, receive, send)
        logger.info(
            "websocket.origin_refused",
            extra={
                "event": "websocket.origin_refused",
                "origin": ", ".join(origins)[:200],
                "client": (scope.get("client") or (None,))[0],
            },
        )
        await _refuse_handshake(receive, send)
        return None


async def _refuse_handshake(receive: Any, send: Any) -> None:
    """Close before accepting: the server answers the handshake with 403."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close"})


def entry_problem(entry: object) -> str | None:
    """Why an ``EXECUTIONS_ALLOWED_ORIGINS`` entry is not usable, or None if it is an origin."""
    if not isinstance(entry, str):
        return f"{entry!r} is not a string."
    if "*" in entry:
        return f"{entry!r} is a wildcard: only exact origins are compared."
    if _parse_entry(entry) is None:
        return f"{entry!r} is not an origin of the form scheme://host[:port]."
    return None


def entries_problems(entries: object) -> list[str]:
    """Every problem of an ``EXECUTIONS_ALLOWED_ORIGINS`` value."""
    if not isinstance(entries, ORIGIN_LISTS):
        return [f"{entries!r} is not a list of origins."]
    return [problem for entry in entries if (problem := entry_problem(entry)) is not None]
