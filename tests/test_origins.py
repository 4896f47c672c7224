"""Exact origins: a browser's Origin must be the request's own origin or a configured one.

The handshakes go through the real ASGI app (project.asgi.application) with channels'
WebsocketCommunicator; a refused origin is closed before the accept, which servers answer with
403 (tests/test_end_to_end.py checks the 403 over daphne). The settings fixture changes the
settings per test; the check reads them at each handshake.
"""

from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.core.checks import Error
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from executions.checks import check_allowed_origins
from executions.origins import Origin, parse_origin, request_origin
from tests.conftest import subscribe

pytestmark = pytest.mark.django_db(transaction=True)


async def handshake(
    application: Any,
    token: str,
    origin: bytes | None,
    host: bytes = b"localhost",
    scheme: str | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> bool:
    """Whether the app accepts the handshake; an accepted one must then authenticate."""
    headers = [(b"host", host), *(extra_headers or [])]
    if origin is not None:
        headers.append((b"origin", origin))
    client = WebsocketCommunicator(application, f"/ws?token={token}", headers=headers)
    if scheme is not None:
        client.scope["scheme"] = scheme
    try:
        connected, code = await client.connect(timeout=5)
        if connected:
            assert (await subscribe(client, "test_graph"))["success"] is True
        else:
            assert code == 1000  # a close before the accept: the server's 403
        return bool(connected)
    finally:
        await client.disconnect(timeout=5)


# --- refused: anything but the exact origin -------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        b"http://localhost:6666",  # another port
        b"http://localhost:8000",
        b"https://localhost",  # another scheme
        b"https://localhost:80",
        b"ws://localhost",
        b"null",  # sandboxed frames, file:// pages
        b"http://localhost.evil.com",  # suffix look-alikes
        b"http://evil-localhost",
        b"http://evillocalhost",
        b"http://evil.localhost",  # a subdomain is another origin
        b"http://localhos",  # prefix look-alikes
        b"http://local",
        b"http://127.0.0.1",  # the same machine by another name
        b"http://localhost/",  # not an origin: a path
        b"http://localhost:80/ws",
        b"http://localhost@evil.com",  # user info
        b"http://evil.com#@localhost",
        b"http://localhost:",
        b"http://localhost:99999",
        b"http://LOCALHOST.evil.com",
        b"localhost",
        b"",
        b"*",
    ],
)
async def test_any_other_origin_is_refused_at_the_handshake(
    application: Any, channel_layer: Any, alice_token: str, origin: bytes
) -> None:
    assert await handshake(application, alice_token, origin) is False


async def test_the_exact_origin_of_the_request_is_accepted(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    assert await handshake(application, alice_token, b"http://localhost") is True
    assert await handshake(application, alice_token, b"HTTP://LocalHost") is True
    assert await handshake(application, alice_token, b"http://localhost:80") is True
    port = b"127.0.0.1:8000"
    assert await handshake(application, alice_token, b"http://" + port, host=port) is True
    assert await handshake(application, alice_token, b"http://localhost", host=port) is False


async def test_default_ports_are_the_same_origin(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    assert await handshake(application, alice_token, b"http://localhost", b"localhost:80")
    assert await handshake(application, alice_token, b"https://localhost:443", scheme="wss")
    assert not await handshake(application, alice_token, b"https://localhost:80", scheme="wss")


async def test_wss_is_https(application: Any, channel_layer: Any, alice_token: str) -> None:
    assert await handshake(application, alice_token, b"https://localhost", scheme="wss") is True
    assert await handshake(application, alice_token, b"http://localhost", scheme="wss") is False


async def test_a_program_without_origin_goes_on_to_authenticate(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    assert await handshake(application, alice_token, None) is True
    assert await handshake(application, alice_token, None, host=b"evil.example") is True


async def test_two_origin_headers_are_refused(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    origin, again = b"http://localhost", [(b"origin", b"http://localhost")]
    assert await handshake(application, alice_token, origin, extra_headers=again) is False


async def test_a_host_outside_allowed_hosts_has_no_origin_of_its_own(
    application: Any, channel_layer: Any, alice_token: str, settings: Any
) -> None:
    settings.ALLOWED_HOSTS = ["example.com"]
    assert await handshake(application, alice_token, b"http://localhost") is False
    assert await handshake(application, alice_token, b"http://example.com", b"example.com")


async def test_allowed_hosts_star_no_longer_turns_the_check_off(
    application: Any, channel_layer: Any, alice_token: str, settings: Any
) -> None:
    settings.ALLOWED_HOSTS = ["*"]
    assert await handshake(application, alice_token, b"http://localhost") is True
    for origin in (b"http://127.0.0.1:6666", b"https://localhost:9", b"http://evil.example"):
        assert await handshake(application, alice_token, origin) is False, origin


async def test_a_subdomain_pattern_in_allowed_hosts_allows_only_the_host_itself(
    application: Any, channel_layer: Any, alice_token: str, settings: Any
) -> None:
    settings.ALLOWED_HOSTS = [".example.com"]
    host = b"app.example.com"
    assert await handshake(application, alice_token, b"http://app.example.com", host) is True
    assert await handshake(application, alice_token, b"http://www.example.com", host) is False
    assert await handshake(application, alice_token, b"http://example.com", host) is False


# --- configured extra origins -------------------------------------------------------------


async def test_a_configured_origin_is_accepted_exactly(
    application: Any, channel_layer: Any, alice_token: str, settings: Any
) -> None:
    settings.EXECUTIONS_ALLOWED_ORIGINS = ["https://app.example.com", "http://localhost:3000"]
    accepted = [
        b"https://app.example.com",
        b"https://app.example.com:443",
        b"http://localhost:3000",
    ]
    for origin in accepted:
        assert await handshake(application, alice_token, origin) is True, origin
    refused = [
        b"http://app.example.com",
        b"https://app.example.com:8443",
        b"https://www.app.example.com",
        b"https://app.example.com.evil.com",
        b"http://localhost:3001",
    ]
    for origin in refused:
        assert await handshake(application, alice_token, origin) is False, origin
    # The request's own origin is still accepted.
    assert await handshake(application, alice_token, b"http://localhost") is True


async def test_wildcard_or_malformed_configured_origins_never_match(
    application: Any, channel_layer: Any, alice_token: str, settings: Any
) -> None:
    settings.EXECUTIONS_ALLOWED_ORIGINS = ["*", "https://*.example.com", "https://app.example.com/"]
    for origin in (b"https://evil.example", b"https://a.example.com", b"https://app.example.com"):
        assert await handshake(application, alice_token, origin) is False, origin


# --- behind a TLS-terminating proxy -------------------------------------------------------


async def test_behind_a_proxy_the_forwarded_scheme_makes_the_origin(
    application: Any, channel_layer: Any, alice_token: str, settings: Any
) -> None:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    https = [(b"x-forwarded-proto", b"https")]
    assert await handshake(application, alice_token, b"https://localhost", extra_headers=https)
    assert not await handshake(application, alice_token, b"http://localhost", extra_headers=https)
    plain = [(b"x-forwarded-proto", b"http")]
    assert await handshake(application, alice_token, b"http://localhost", extra_headers=plain)
    assert not await handshake(application, alice_token, b"https://localhost", extra_headers=plain)
    # Without the header the connection's own scheme counts.
    assert await handshake(application, alice_token, b"http://localhost")


async def test_the_forwarded_scheme_counts_only_when_the_setting_says_so(
    application: Any, channel_layer: Any, alice_token: str, settings: Any
) -> None:
    settings.SECURE_PROXY_SSL_HEADER = None
    https = [(b"x-forwarded-proto", b"https")]
    assert not await handshake(application, alice_token, b"https://localhost", extra_headers=https)
    # Django ignores header names with an underscore (a client could spoof the proxy's).
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    spoofed = [(b"x_forwarded_proto", b"https")]
    assert not await handshake(
        application, alice_token, b"https://localhost", extra_headers=spoofed
    )


async def test_the_forwarded_host_counts_under_use_x_forwarded_host(
    application: Any, channel_layer: Any, alice_token: str, settings: Any
) -> None:
    settings.ALLOWED_HOSTS = ["localhost", "public.example.com"]
    forwarded = [(b"x-forwarded-host", b"public.example.com")]
    origin = b"http://public.example.com"
    assert not await handshake(application, alice_token, origin, extra_headers=forwarded)
    settings.USE_X_FORWARDED_HOST = True
    assert await handshake(application, alice_token, origin, extra_headers=forwarded)
    assert not await handshake(
        application, alice_token, b"http://localhost", extra_headers=forwarded
    )


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("http://localhost", Origin("http", "localhost", 80)),
        ("HTTPS://Example.COM", Origin("https", "example.com", 443)),
        ("https://example.com:8443", Origin("https", "example.com", 8443)),
        ("http://[::1]:8000", Origin("http", "[::1]", 8000)),
        ("http://127.0.0.1", Origin("http", "127.0.0.1", 80)),
        ("app://local", Origin("app", "local", None)),
        ("null", None),
        ("", None),
        ("*", None),
        ("https://*.example.com", None),
        ("http://localhost/", None),
        ("http://localhost?x", None),
        ("http://user@localhost", None),
        ("http://localhost:0", None),
        ("http://localhost:65536", None),
        ("http://exa mple.com", None),
        ("http://bücher.example", None),
        ("//localhost", None),
        (" http://localhost", None),
    ],
)
def test_parse_origin(text: str, origin: Origin | None) -> None:
    assert parse_origin(text) == origin


def test_an_origin_prints_without_its_default_port() -> None:
    assert str(Origin("https", "example.com", 443)) == "https://example.com"
    assert str(Origin("http", "example.com", 8080)) == "http://example.com:8080"


def test_the_request_origin_needs_a_host(settings: Any) -> None:
    assert request_origin({"type": "websocket", "headers": []}) is None
    two_hosts = [(b"host", b"localhost"), (b"host", b"evil.example")]
    assert request_origin({"type": "websocket", "headers": two_hosts}) is None
    settings.ALLOWED_HOSTS = []
    settings.DEBUG = True  # as Django: localhost variants when ALLOWED_HOSTS is empty
    assert request_origin({"headers": [(b"host", b"app.localhost:8000")]}) == Origin(
        "http", "app.localhost", 8000
    )


# --- the system check ----------------------------------------------------------------------


def check_errors(settings: Any, value: Any) -> list[Error]:
    settings.EXECUTIONS_ALLOWED_ORIGINS = value
    return [message for message in check_allowed_origins(None) if isinstance(message, Error)]


def test_the_check_accepts_exact_origins_and_the_default(settings: Any) -> None:
    assert check_errors(settings, []) == []
    assert check_errors(settings, ("https://app.example.com", "http://localhost:3000")) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["*"], "wildcard"),
        (["https://*.example.com"], "wildcard"),
        (["https://app.example.com/"], "not an origin"),
        (["app.example.com"], "not an origin"),
        (["https://app.example.com:99999"], "not an origin"),
        (["null"], "not an origin"),
        ([None], "not a string"),
        ("https://app.example.com", "not a list of origins"),
    ],
)
def test_the_check_refuses_a_wildcard_or_a_malformed_entry(
    settings: Any, value: Any, problem: str
) -> None:
    errors = check_errors(settings, value)
    assert len(errors) == 1
    assert errors[0].id == "executions.E002"
    assert problem in errors[0].msg
    assert "scheme://host[:port]" in (errors[0].hint or "")


def test_the_check_reports_each_bad_entry(settings: Any) -> None:
    errors = check_errors(settings, ["https://ok.example.com", "*", "ftp//x"])
    assert [error.id for error in errors] == ["executions.E002", "executions.E002"]


def test_manage_py_check_fails_on_a_wildcard(settings: Any) -> None:
    settings.EXECUTIONS_ALLOWED_ORIGINS = ["*"]
    with pytest.raises(SystemCheckError, match=r"executions\.E002"):
        call_command("check")
