"""Tokens and origins over real daphne and uvicorn processes, and what those servers print.

A token travels in the ``Authorization`` header, in the ``executions.bearer.`` subprotocol (the
server answers ``executions``, never the token) or in ``?token=``; whichever it is, nothing a
server prints holds it. Each server runs as an operator starts it, with its default logging
(daphne's access log, uvicorn's access and handshake lines) and the app's at DEBUG. The clients
are the real ``websockets`` library; every wait is bounded.
"""

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from tests.servers import DaphneServer, Site, UvicornServer, prepare_site

GRAPH = f"transport-{uuid.uuid4().hex[:10]}"
TIMEOUT = 5.0
SERVERS = {"daphne": DaphneServer, "uvicorn": UvicornServer}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    prepared = prepare_site(tmp_path_factory.mktemp("transport-site"))
    prepared.token_for("alice")
    prepared.register_graph(GRAPH, "alice")
    return prepared


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest, site: Site, tmp_path: Path) -> Iterator[DaphneServer]:
    """A fresh server of each kind: its output holds this test's connections only."""
    env = {**site.env, "EXECUTIONS_LOG_LEVEL": "DEBUG"}
    with SERVERS[request.param](env, tmp_path, name=request.param) as running:
        yield running


def secrets_of(token: str) -> list[str]:
    """The token, and its signature alone (the part after the last separator)."""
    return [token, token.rsplit(".", 1)[-1]]


def forged(token: str) -> str:
    return token[:-1] + ("B" if token.endswith("A") else "A")


async def subscribed(client: ClientConnection) -> None:
    """Subscribe to Alice's graph and expect the acknowledgement."""
    await client.send(json.dumps({"method": "subscribe", "data": {"graph_id": GRAPH}}))
    async with asyncio.timeout(TIMEOUT):
        reply = json.loads(await client.recv())
    assert reply["method"] == "subscribe", reply
    assert reply["success"] is True, reply


async def refused_with(client: ClientConnection) -> tuple[list[str], int, str]:
    """The error frames, close code and reason of a connection the server closes."""
    frames: list[str] = []
    closed: ConnectionClosed | None = None
    async with asyncio.timeout(TIMEOUT):
        while closed is None:
            try:
                frames.append(json.loads(await client.recv())["error"])
            except ConnectionClosed as exc:
                closed = exc
    assert closed.rcvd is not None, f"no close frame: {closed!r}"
    return frames, closed.rcvd.code, closed.rcvd.reason


def http_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return error.code


def wait_for_output(server: DaphneServer, text: str) -> None:
    """Until the server has printed `text` (lines are written as things happen), at most 5 s."""
    deadline = time.monotonic() + TIMEOUT
    while text not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)


# --- the three ways to send a token ---------------------------------------------------------


async def test_a_token_in_the_authorization_header(site: Site, server: DaphneServer) -> None:
    token = await asyncio.to_thread(site.token_for, "alice")
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(server.ws_url, additional_headers=headers, open_timeout=TIMEOUT) as client:
        assert client.subprotocol is None
        await subscribed(client)
    headers = {"Authorization": f"Bearer {forged(token)}"}
    async with connect(server.ws_url, additional_headers=headers, open_timeout=TIMEOUT) as client:
        frames, code, _ = await refused_with(client)
    assert (frames, code) == (["Invalid token"], 4001)


async def test_a_token_in_the_subprotocol_gets_executions_back(
    site: Site, server: DaphneServer
) -> None:
    token = await asyncio.to_thread(site.token_for, "alice")
    offered = [Subprotocol("executions"), Subprotocol(f"executions.bearer.{token}")]
    async with connect(server.ws_url, subprotocols=offered, open_timeout=TIMEOUT) as client:
        assert client.subprotocol == "executions"
        assert client.response is not None
        assert client.response.headers["Sec-WebSocket-Protocol"] == "executions"
        await subscribed(client)
    await asyncio.sleep(0.2)  # the disconnect's lines
    output = server.output()
    for secret in secrets_of(token):
        assert secret not in output, f"the token is in {server.name}'s output:\n{output}"


async def test_executions_alone_gets_executions_and_the_query_token_still_works(
    site: Site, server: DaphneServer
) -> None:
    token = await asyncio.to_thread(site.token_for, "alice")
    url = f"{server.ws_url}?token={token}"
    offered = [Subprotocol("executions")]
    async with connect(url, subprotocols=offered, open_timeout=TIMEOUT) as client:
        assert client.subprotocol == "executions"
        await subscribed(client)


async def test_the_header_wins_over_the_query(site: Site, server: DaphneServer) -> None:
    token = await asyncio.to_thread(site.token_for, "alice")
    headers = {"Authorization": f"Bearer {forged(token)}"}
    url = f"{server.ws_url}?token={token}"
    async with connect(url, additional_headers=headers, open_timeout=TIMEOUT) as client:
        frames, code, _ = await refused_with(client)
    assert (frames, code) == (["Invalid token"], 4001)


# --- origins --------------------------------------------------------------------------------


async def test_only_the_exact_origin_passes_the_handshake(site: Site, server: DaphneServer) -> None:
    token = await asyncio.to_thread(site.token_for, "alice")
    headers = {"Authorization": f"Bearer {token}"}
    own = f"http://127.0.0.1:{server.port}"
    others = [
        f"http://127.0.0.1:{server.port + 1}",
        f"https://127.0.0.1:{server.port}",
        f"http://localhost:{server.port}",
        f"http://127.0.0.1.evil.com:{server.port}",
        "null",
    ]
    for origin in others:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                server.ws_url,
                origin=Origin(origin),
                additional_headers=headers,
                open_timeout=TIMEOUT,
            ):
                pytest.fail(f"{server.name} accepted the origin {origin}")
        assert refused.value.response.status_code == 403, origin
    async with connect(
        server.ws_url, origin=Origin(own), additional_headers=headers, open_timeout=TIMEOUT
    ) as client:
        await subscribed(client)


# --- the logs -------------------------------------------------------------------------------


async def test_a_query_token_appears_nowhere_in_the_servers_output(
    site: Site, server: DaphneServer
) -> None:
    token = await asyncio.to_thread(site.token_for, "alice")
    bad_token = forged(token)
    async with connect(f"{server.ws_url}?token={token}", open_timeout=TIMEOUT) as client:
        await subscribed(client)
    async with connect(f"{server.ws_url}?a=1&token={bad_token}", open_timeout=TIMEOUT) as client:
        _, code, _ = await refused_with(client)
    assert code == 4001
    # A plain HTTP request to the WebSocket URL: both access logs print its query string.
    status = await asyncio.to_thread(http_get, f"{server.http_url}/ws?token={token}")
    assert status == 426
    await asyncio.to_thread(wait_for_output, server, "websocket.disconnect")
    await asyncio.sleep(0.2)  # the close of the second connection
    await asyncio.to_thread(server.stop)

    output = server.output()
    for secret in secrets_of(token) + secrets_of(bad_token):
        assert secret not in output, f"a token is in {server.name}'s output:\n{output}"
    # The logs were on and the connections are in them: the check above is not vacuous.
    for event in ("websocket.connect", "websocket.auth_failure", "websocket.disconnect"):
        assert event in output, f"{event} is not in {server.name}'s output:\n{output}"
    if isinstance(server, UvicornServer):
        assert '"WebSocket /ws?token=[redacted]" [accepted]' in output, output
        assert '"WebSocket /ws?a=1&token=[redacted]" [accepted]' in output, output
        assert '"GET /ws?token=[redacted] HTTP/1.1" 426' in output, output
    else:
        assert '"WSCONNECT /ws"' in output, f"daphne's access log is off:\n{output}"
        assert '"GET /ws?token=[redacted]" 426' in output, output


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("/ws?token=abc.DEF-_", "/ws?token=[redacted]"),
        ("/live/ws?a=1&token=abc&b=2", "/live/ws?a=1&token=[redacted]&b=2"),
        ("/ws?%74oken=abc", "/ws?%74oken=[redacted]"),  # parse_qs decodes the name too
        ("/ws?token=a&token=b", "/ws?token=[redacted]&token=[redacted]"),
        ("/ws?token=", "/ws?token="),
        ("/ws?tokens=abc&mytoken=abc", "/ws?tokens=abc&mytoken=abc"),
        ("/ws", "/ws"),
        ('"GET /ws?token=abc HTTP/1.1" 426', '"GET /ws?token=[redacted] HTTP/1.1" 426'),
    ],
)
def test_redact_query_tokens(text: str, redacted: str) -> None:
    from executions.servers.logs import redact_query_tokens

    assert redact_query_tokens(text) == redacted


def test_the_filter_keeps_uvicorns_access_lines_whole() -> None:
    import logging

    from uvicorn.logging import AccessFormatter, DefaultFormatter

    from executions.servers.uvicorn import RedactTokens

    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/ws?token=secret", "1.1", 426),
        None,
    )
    handshake = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", "/ws?token=secret"),
        None,
    )
    redact = RedactTokens()
    assert redact.filter(access) is True
    assert redact.filter(handshake) is True

    line = AccessFormatter("%(levelprefix)s %(message)s", use_colors=False).format(access)
    assert line == 'INFO:     127.0.0.1:5000 - "GET /ws?token=[redacted] HTTP/1.1" 426'
    line = DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False).format(handshake)
    assert line == 'INFO:     127.0.0.1:5000 - "WebSocket /ws?token=[redacted]" [accepted]'


@pytest.mark.parametrize("adapters", [True, False])
def test_the_filter_is_installed_under_uvicorn_adapters_on_or_off(
    settings: Any, monkeypatch: pytest.MonkeyPatch, adapters: bool
) -> None:
    import logging

    from executions import servers
    from executions.servers import uvicorn

    settings.EXECUTIONS_SERVER_ADAPTERS = adapters
    monkeypatch.setattr(uvicorn, "serving", lambda: True)
    monkeypatch.setattr(servers.daphne, "serving", lambda: False)  # its hooks: not here
    loggers = [logging.getLogger(name) for name in uvicorn.LOGGERS]
    for logger in loggers:
        monkeypatch.setattr(logger, "filters", [])
    servers.install_server_hooks()
    servers.install_server_hooks()  # once only, however often
    for logger in loggers:
        assert [type(f) for f in logger.filters] == [uvicorn.RedactTokens], logger.name
