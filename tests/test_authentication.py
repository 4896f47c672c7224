"""Who may connect: browsers by session from allowed origins, programs by signed token."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.management import CommandError, call_command
from django.test import Client

from executions.auth import chosen_subprotocol, token_from_scope
from executions.tokens import mint_token
from tests.conftest import browser_headers, subscribe

pytestmark = pytest.mark.django_db(transaction=True)


async def assert_refused(client: Any, reason: str) -> None:
    error = await client.receive_json_from(timeout=5)
    assert error == {
        "method": "error",
        "data": None,
        "success": False,
        "channel": None,
        "error": reason,
    }
    closed = await client.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4001, "reason": reason}


def session_cookie(user: Any) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def test_a_connection_without_credentials_is_closed_with_4001(connect: Any) -> None:
    client = await connect()
    await assert_refused(client, "Missing authentication token")


async def test_an_empty_token_counts_as_missing(connect: Any) -> None:
    client = await connect(token="")
    await assert_refused(client, "Missing authentication token")


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJ1IjoiMSJ9.forged", "%00"])
async def test_a_malformed_or_forged_token_is_closed_with_4001(connect: Any, token: str) -> None:
    client = await connect(token=token)
    await assert_refused(client, "Invalid token")


async def test_a_tampered_token_is_closed_with_4001(connect: Any, alice_token: str) -> None:
    payload, signature = alice_token.rsplit(".", 1)
    tampered = f"{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}"
    client = await connect(token=tampered)
    await assert_refused(client, "Invalid token")


async def test_an_expired_token_is_closed_with_4001(connect: Any, alice: Any) -> None:
    token = await sync_to_async(lambda: mint_token(alice, ttl_seconds=1).token)()
    await asyncio.sleep(1.1)
    client = await connect(token=token)
    await assert_refused(client, "Token expired")


async def test_a_password_change_revokes_earlier_tokens(connect: Any, alice: Any) -> None:
    token = await sync_to_async(lambda: mint_token(alice).token)()

    def change_password() -> None:
        alice.set_password("a-new-password-for-alice")
        alice.save()

    await sync_to_async(change_password)()
    client = await connect(token=token)
    await assert_refused(client, "Invalid token")


async def test_a_deactivated_users_token_is_refused(connect: Any, alice: Any) -> None:
    token = await sync_to_async(lambda: mint_token(alice).token)()
    alice.is_active = False
    await sync_to_async(alice.save)()
    client = await connect(token=token)
    await assert_refused(client, "Invalid token")


async def test_a_program_without_origin_connects_with_a_token(
    connect: Any, alice_token: str
) -> None:
    client = await connect(token=alice_token, origin=None)
    assert (await subscribe(client, "test_graph"))["success"] is True


async def test_a_browser_from_another_site_is_refused_at_the_handshake(
    connect: Any, alice_token: str
) -> None:
    await connect(token=alice_token, origin=b"http://evil.example", expect_accept=False)


async def test_a_null_origin_is_refused(connect: Any, alice_token: str) -> None:
    await connect(token=alice_token, origin=b"null", expect_accept=False)


async def test_a_browser_connects_with_its_session(application: Any, alice: Any) -> None:
    from channels.testing import WebsocketCommunicator

    cookie = await sync_to_async(session_cookie)(alice)
    client = WebsocketCommunicator(
        application, "/ws", headers=[*browser_headers(), (b"cookie", cookie)]
    )
    connected, _ = await client.connect(timeout=5)
    try:
        assert connected
        assert (await subscribe(client, "test_graph"))["success"] is True
    finally:
        await client.disconnect()


async def test_a_given_token_wins_over_the_session(application: Any, alice: Any) -> None:
    from channels.testing import WebsocketCommunicator

    cookie = await sync_to_async(session_cookie)(alice)
    client = WebsocketCommunicator(
        application,
        "/ws?token=forged",
        headers=[*browser_headers(), (b"cookie", cookie)],
    )
    await client.connect(timeout=5)
    try:
        await assert_refused(client, "Invalid token")
    finally:
        await client.disconnect()


async def test_a_closed_connection_never_gets_events(connect: Any, result_factory: Any) -> None:
    from executions.events import send_execution_result

    client = await connect(token="garbage")
    await assert_refused(client, "Invalid token")
    await send_execution_result(result_factory())
    assert await client.receive_nothing(timeout=0.2)


def test_logged_in_users_get_a_token_over_http(alice: Any) -> None:
    client = Client()
    client.force_login(alice)

    response = client.post("/api/ws-token")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    from executions.tokens import user_for_token

    assert user_for_token(body["token"]) == alice


def test_anonymous_users_get_no_token(alice: Any) -> None:
    response = Client().post("/api/ws-token")
    assert response.status_code == 401


def test_the_token_endpoint_checks_csrf(alice: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post("/api/ws-token").status_code == 403


def test_ws_token_command_prints_the_token_alone(alice: Any) -> None:
    from executions.tokens import user_for_token

    out = StringIO()
    call_command("ws_token", "alice", stdout=out)

    token = out.getvalue().strip()
    assert "\n" not in token
    assert user_for_token(token) == alice


def test_ws_token_tokens_are_url_safe_as_they_are(alice: Any) -> None:
    out = StringIO()
    call_command("ws_token", "alice", stdout=out)
    token = out.getvalue().strip()
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def test_ws_token_refuses_an_unknown_user(transactional_db: None) -> None:
    with pytest.raises(CommandError, match="--create-user"):
        call_command("ws_token", "nobody", stdout=StringIO())


def test_ws_token_creates_the_user_when_asked(transactional_db: None) -> None:
    from django.contrib.auth import get_user_model

    out = StringIO()
    call_command("ws_token", "newcomer", "--create-user", "--ttl", "60", stdout=out)

    user = get_user_model().objects.get(username="newcomer")
    assert not user.has_usable_password()
    from executions.tokens import user_for_token

    assert user_for_token(out.getvalue().strip()) == user


def test_ws_token_refuses_a_non_positive_ttl(alice: Any) -> None:
    with pytest.raises(CommandError, match="positive"):
        call_command("ws_token", "alice", "--ttl", "0", stdout=StringIO())


# --- where the token comes from: header, subprotocol, query -------------------------------


@contextlib.asynccontextmanager
async def handshake(
    application: Any,
    path: str = "/ws",
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[tuple[WebsocketCommunicator, str | None]]:
    """A connection from a program (Host, no Origin), with the accepted subprotocol."""
    client = WebsocketCommunicator(
        application,
        path,
        headers=[(b"host", b"localhost"), *(headers or [])],
        subprotocols=subprotocols,
    )
    try:
        connected, subprotocol = await client.connect(timeout=5)
        assert connected is True
        yield client, subprotocol
    finally:
        await client.disconnect(timeout=5)


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def forged(token: str) -> str:
    """The token with its last character changed: its signature no longer matches."""
    return token[:-1] + ("B" if token.endswith("A") else "A")


async def assert_authenticated(client: WebsocketCommunicator) -> None:
    assert (await subscribe(client, "test_graph"))["success"] is True


async def test_a_token_in_the_authorization_header_authenticates(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    async with handshake(application, headers=bearer(alice_token)) as (client, subprotocol):
        await assert_authenticated(client)
    assert subprotocol is None


async def test_the_bearer_scheme_is_case_insensitive(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    headers = [(b"authorization", f"bearer   {alice_token}".encode())]
    async with handshake(application, headers=headers) as (client, _):
        await assert_authenticated(client)


async def test_a_token_in_the_subprotocol_authenticates_and_is_never_echoed(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    offered = ["executions", f"executions.bearer.{alice_token}"]
    async with handshake(application, subprotocols=offered) as (client, subprotocol):
        await assert_authenticated(client)
    assert subprotocol == "executions"


async def test_offering_executions_alone_gets_executions_back(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    path = f"/ws?token={alice_token}"
    async with handshake(application, path, subprotocols=["executions"]) as (client, chosen):
        await assert_authenticated(client)
    assert chosen == "executions"


async def test_without_executions_among_the_subprotocols_none_is_chosen(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    # Only the token's: accepting it would echo the token in the handshake's answer.
    offered = [f"executions.bearer.{alice_token}", "other"]
    async with handshake(application, subprotocols=offered) as (client, subprotocol):
        await assert_authenticated(client)
    assert subprotocol is None


@pytest.mark.parametrize(
    ("headers", "subprotocols"),
    [
        ([(b"authorization", b"Bearer ")], None),
        ([(b"authorization", b"Bearer")], None),
        ([(b"authorization", b"Basic YWxpY2U6cHc=")], None),
        (None, ["executions", "executions.bearer."]),
    ],
    ids=["empty-bearer", "bare-bearer", "basic", "empty-subprotocol"],
)
async def test_an_empty_header_or_subprotocol_token_counts_as_missing(
    application: Any,
    channel_layer: Any,
    headers: list[tuple[bytes, bytes]] | None,
    subprotocols: list[str] | None,
) -> None:
    async with handshake(application, headers=headers, subprotocols=subprotocols) as (client, _):
        await assert_refused(client, "Missing authentication token")


async def test_an_empty_header_token_falls_back_to_the_query(
    application: Any, channel_layer: Any, alice_token: str
) -> None:
    headers = [(b"authorization", b"Bearer ")]
    async with handshake(application, f"/ws?token={alice_token}", headers) as (client, _):
        await assert_authenticated(client)


@pytest.mark.parametrize("where", ["header", "subprotocol"])
async def test_an_invalid_header_or_subprotocol_token_is_refused_like_a_query_token(
    application: Any, channel_layer: Any, alice_token: str, where: str
) -> None:
    token = forged(alice_token)
    headers = bearer(token) if where == "header" else None
    subprotocols = ["executions", f"executions.bearer.{token}"] if where == "subprotocol" else None
    async with handshake(application, headers=headers, subprotocols=subprotocols) as (client, _):
        await assert_refused(client, "Invalid token")


@pytest.mark.parametrize(
    ("header", "subprotocol", "query", "outcome"),
    [
        # The header wins over the subprotocol and the query...
        ("forged", "valid", "valid", "Invalid token"),
        ("valid", "forged", "forged", None),
        # ...the subprotocol over the query.
        (None, "forged", "valid", "Invalid token"),
        (None, "valid", "forged", None),
        ("valid", None, "forged", None),
        ("forged", None, "valid", "Invalid token"),
    ],
)
async def test_the_header_wins_then_the_subprotocol_then_the_query(
    application: Any,
    channel_layer: Any,
    alice_token: str,
    header: str | None,
    subprotocol: str | None,
    query: str,
    outcome: str | None,
) -> None:
    tokens = {"valid": alice_token, "forged": forged(alice_token)}
    headers = bearer(tokens[header]) if header else None
    offered = ["executions", f"executions.bearer.{tokens[subprotocol]}"] if subprotocol else None
    path = f"/ws?token={tokens[query]}"
    async with handshake(application, path, headers, offered) as (client, _):
        if outcome is None:
            await assert_authenticated(client)
        else:
            await assert_refused(client, outcome)


async def test_a_header_token_wins_over_the_session(application: Any, alice: Any) -> None:
    cookie = await sync_to_async(session_cookie)(alice)
    headers = [*browser_headers(), (b"cookie", cookie), *bearer("forged")]
    client = WebsocketCommunicator(application, "/ws", headers=headers)
    await client.connect(timeout=5)
    try:
        await assert_refused(client, "Invalid token")
    finally:
        await client.disconnect()


@pytest.mark.parametrize(
    ("headers", "subprotocols", "query", "expected"),
    [
        ([(b"authorization", b"Bearer h")], ["executions.bearer.s"], b"token=q", "h"),
        ([(b"Authorization", b"BEARER h")], [], b"", "h"),
        ([(b"authorization", b"Basic x"), (b"authorization", b"Bearer h")], [], b"", "h"),
        ([], ["executions", "executions.bearer.s.t-u_v"], b"token=q", "s.t-u_v"),
        ([], ["executions.bearer."], b"token=q", "q"),
        ([], ["executions.bearerless"], b"token=", ""),
        ([], [], b"a=1&token=q", "q"),
        ([], [], b"", ""),
    ],
)
def test_token_from_scope(
    headers: list[tuple[bytes, bytes]], subprotocols: list[str], query: bytes, expected: str
) -> None:
    scope = {"headers": headers, "subprotocols": subprotocols, "query_string": query}
    assert token_from_scope(scope) == expected


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["executions", "executions.bearer.t"], "executions"),
        (["executions.bearer.t", "executions"], "executions"),
        (["executions"], "executions"),
        (["executions.bearer.t"], None),
        (["graphql-ws"], None),
        ([], None),
        (None, None),
    ],
)
def test_chosen_subprotocol(offered: list[str] | None, chosen: str | None) -> None:
    scope = {} if offered is None else {"subprotocols": offered}
    assert chosen_subprotocol(scope) == chosen
