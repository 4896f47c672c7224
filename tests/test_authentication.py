"""Who may connect: browsers by session from allowed origins, programs by signed token."""

import asyncio
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.test import Client

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
