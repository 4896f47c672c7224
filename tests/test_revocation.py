"""Losing access while connected: expiry, password change, deactivation, deletion and logout
close the user's open connections with 4001, and every subscribe checks again.

The real ASGI app on the in-memory and Redis pub/sub layers; the revocation travels through
the layer exactly as it does between processes (test_end_to_end_revocation.py runs two daphne
processes on Redis).
"""

import asyncio
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from executions.protocol import ErrorText
from executions.tokens import mint_token
from tests.conftest import ALLOWED_ORIGIN, subscribe
from tests.support import group_members

pytestmark = pytest.mark.django_db(transaction=True)

# The bound: a revocation reaches every open connection within two seconds.
REVOCATION_SECONDS = 2.0


@pytest.fixture(params=["memory", "redis-pubsub"])
def layer_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def assert_closed_for(client: WebsocketCommunicator, reason: str, within: float) -> None:
    """The server sent an error frame with `reason`, then closed with 4001, within `within` s."""
    error = await client.receive_json_from(timeout=within)
    assert (error["method"], error["error"]) == ("error", reason)
    closed = await client.receive_output(timeout=within)
    assert closed == {"type": "websocket.close", "code": 4001, "reason": reason}


def session_client(user: Any) -> tuple[Client, bytes]:
    client = Client()
    client.force_login(user)
    return client, f"sessionid={client.cookies['sessionid'].value}".encode()


async def open_with_session(application: Any, cookie: bytes) -> WebsocketCommunicator:
    client = WebsocketCommunicator(
        application,
        "/ws",
        headers=[(b"host", b"localhost"), (b"origin", ALLOWED_ORIGIN), (b"cookie", cookie)],
    )
    connected, _ = await client.connect(timeout=5)
    assert connected
    return client


async def test_a_token_closes_its_connection_when_it_expires(
    connect: Any, alice: Any, channel_layer: Any
) -> None:
    issued = await sync_to_async(mint_token)(alice, ttl_seconds=2)
    client = await connect(token=issued.token)
    assert (await subscribe(client, "test_graph"))["success"] is True

    await assert_closed_for(client, ErrorText.TOKEN_EXPIRED, within=4)

    # Not before the token's end (whole seconds), and promptly after it.
    assert 0 <= time.time() - issued.expires_at.timestamp() < 1.0


async def test_a_password_change_closes_the_users_connections(
    connect: Any, alice: Any, make_user: Any, channel_layer: Any
) -> None:
    bob = await sync_to_async(make_user)("bob", ("bob-graph",))
    token = await sync_to_async(lambda: mint_token(alice).token)()
    first, second = await connect(token=token), await connect(token=token)
    bystander = await connect(token=await sync_to_async(lambda: mint_token(bob).token)())
    await subscribe(first, "test_graph")

    def change_password() -> None:
        alice.set_password("a-new-password-for-alice")
        alice.save()

    await sync_to_async(change_password)()

    await assert_closed_for(first, ErrorText.PASSWORD_CHANGED, REVOCATION_SECONDS)
    await assert_closed_for(second, ErrorText.PASSWORD_CHANGED, REVOCATION_SECONDS)
    assert (await subscribe(bystander, "bob-graph"))["success"] is True


async def test_deactivation_closes_the_users_connections(
    connect: Any, alice: Any, alice_token: str, channel_layer: Any
) -> None:
    client = await connect(token=alice_token)

    def deactivate() -> None:
        alice.is_active = False
        alice.save()

    await sync_to_async(deactivate)()

    await assert_closed_for(client, ErrorText.USER_DEACTIVATED, REVOCATION_SECONDS)


async def test_deleting_the_user_closes_their_connections(
    connect: Any, alice: Any, alice_token: str, channel_layer: Any
) -> None:
    client = await connect(token=alice_token)

    await sync_to_async(alice.delete)()

    await assert_closed_for(client, ErrorText.USER_DELETED, REVOCATION_SECONDS)


async def test_a_logout_closes_the_connections_of_that_session_only(
    application: Any, connect: Any, alice: Any, alice_token: str, channel_layer: Any
) -> None:
    browser, cookie = await sync_to_async(session_client)(alice)
    _, other_cookie = await sync_to_async(session_client)(alice)
    logged_out = await open_with_session(application, cookie)
    other_browser = await open_with_session(application, other_cookie)
    program = await connect(token=alice_token)
    try:
        response = await sync_to_async(browser.post)("/logout/")
        assert response.status_code == 302

        await assert_closed_for(logged_out, ErrorText.SESSION_ENDED, REVOCATION_SECONDS)
        assert (await subscribe(other_browser, "test_graph"))["success"] is True
        assert (await subscribe(program, "test_graph"))["success"] is True
    finally:
        await other_browser.disconnect()


async def test_a_subscribe_checks_again_what_no_signal_announced(
    connect: Any, alice: Any, alice_token: str, channel_layer: Any
) -> None:
    # QuerySet.update() sends no signal: only the check at the next subscribe can notice.
    client = await connect(token=alice_token)
    assert (await subscribe(client, "test_graph"))["success"] is True
    users = get_user_model().objects

    await sync_to_async(lambda: users.filter(pk=alice.pk).update(is_active=False))()
    await client.send_json_to({"method": "subscribe", "data": {"graph_id": "graph-2"}})

    await assert_closed_for(client, ErrorText.USER_DEACTIVATED, within=5)


async def test_a_subscribe_checks_the_tokens_password_again(
    connect: Any, alice: Any, alice_token: str, channel_layer: Any
) -> None:
    client = await connect(token=alice_token)
    users = get_user_model().objects

    await sync_to_async(lambda: users.filter(pk=alice.pk).update(password="!disabled"))()
    await client.send_json_to({"method": "subscribe", "data": {"graph_id": "test_graph"}})

    await assert_closed_for(client, ErrorText.PASSWORD_CHANGED, within=5)


async def test_a_subscribe_checks_that_the_session_still_exists(
    application: Any, alice: Any, channel_layer: Any
) -> None:
    from django.contrib.sessions.models import Session

    _, cookie = await sync_to_async(session_client)(alice)
    client = await open_with_session(application, cookie)

    await sync_to_async(lambda: Session.objects.all().delete())()  # no signal of ours
    await client.send_json_to({"method": "subscribe", "data": {"graph_id": "test_graph"}})

    await assert_closed_for(client, ErrorText.SESSION_ENDED, within=5)


async def test_nothing_of_a_closed_connection_stays_in_the_layer(
    connect: Any, alice_token: str, channel_layer: Any
) -> None:
    client = await connect(token=alice_token)
    async with asyncio.timeout(5):
        # The process joins once the connection is counted in, just after the handshake.
        while "executions.revocations" not in "".join(await group_members(channel_layer)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await client.disconnect()

    async with asyncio.timeout(5):
        while await group_members(channel_layer):  # noqa: ASYNC110 (the layer's own table)
            await asyncio.sleep(0.05)


async def test_a_replay_stops_when_the_connection_is_revoked(
    connect: Any, alice: Any, alice_token: str, channel_layer: Any
) -> None:
    from executions import history
    from tests.conftest import make_result

    stored = 5000
    results = [make_result(node_exec_id=f"replayed-{n}") for n in range(stored)]
    await sync_to_async(history.record)(results)
    client = await connect(token=alice_token)

    def change_password() -> None:
        alice.set_password("changed-during-the-replay")
        alice.save()

    await client.send_json_to(
        {"method": "subscribe", "data": {"graph_id": "test_graph", "since": 0}}
    )
    assert (await client.receive_json_from(timeout=5))["success"] is True
    assert (await client.receive_json_from(timeout=5))["seq"] == 1  # the replay is under way
    await sync_to_async(change_password)()

    events = 1
    async with asyncio.timeout(20):
        while True:
            frame = await client.receive_json_from(timeout=10)
            if frame["method"] == "error":
                break
            events += frame["method"] == "execution_event"
    assert frame["error"] == ErrorText.PASSWORD_CHANGED
    closed = await client.receive_output(timeout=5)
    assert closed["code"] == 4001
    assert events < stored  # the replay stopped at the revocation, not at its end


@pytest.mark.parametrize(
    "load",
    [
        lambda users: users.only("username").get(username="alice"),
        lambda users: users.defer("password").get(username="alice"),
        lambda users: users.only("username", "password").get(username="alice"),
    ],
    ids=["only", "defer", "only-password"],
)
def test_users_load_with_deferred_fields(alice: Any, load: Any) -> None:
    # The revocation signals read what is loaded only: a deferred field is not fetched.
    users = get_user_model().objects
    user = load(users)
    user.refresh_from_db(fields=["last_login"])
    assert user.username == "alice"
    user.save()  # nothing changed that it knows of: no revocation, no error


def set_session_end(cookie: bytes, seconds: int) -> None:
    """Save the cookie's session again, now ending `seconds` from now (what a request does)."""
    from importlib import import_module

    from django.conf import settings

    key = cookie.decode().removeprefix("sessionid=")
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key=key)
    session.load()
    session.set_expiry(seconds)
    session.save()


async def test_a_session_closes_its_connection_when_it_ends(
    application: Any, alice: Any, channel_layer: Any
) -> None:
    _, cookie = await sync_to_async(session_client)(alice)
    await sync_to_async(set_session_end)(cookie, 1)
    client = await open_with_session(application, cookie)

    await assert_closed_for(client, ErrorText.SESSION_ENDED, within=3)


async def test_a_session_saved_again_keeps_its_connection_past_the_old_end(
    application: Any, alice: Any, channel_layer: Any
) -> None:
    _, cookie = await sync_to_async(session_client)(alice)
    await sync_to_async(set_session_end)(cookie, 1)
    client = await open_with_session(application, cookie)
    try:
        await sync_to_async(set_session_end)(cookie, 60)  # the user was active meanwhile
        await asyncio.sleep(2)

        assert (await subscribe(client, "test_graph"))["success"] is True
    finally:
        await client.disconnect()


async def test_a_session_ends_its_sse_stream_when_it_ends_and_not_before(
    application: Any, alice: Any, channel_layer: Any
) -> None:
    from executions.sse import OPENING
    from tests.test_sse import Stream

    _, ending = await sync_to_async(session_client)(alice)
    _, extended = await sync_to_async(session_client)(alice)
    for cookie in (ending, extended):
        await sync_to_async(set_session_end)(cookie, 1)
    path = "/api/graphs/test_graph/events"
    ends = await Stream(application, path, [(b"cookie", ending)]).start()
    goes_on = await Stream(application, path, [(b"cookie", extended)]).start()
    await goes_on.read_until(OPENING)  # it has read its session's end: one second from now
    await sync_to_async(set_session_end)(extended, 60)

    body = await asyncio.wait_for(ends.read_to_end(), 4)

    assert body.endswith(
        b'event: error\ndata: {"error":"' + ErrorText.SESSION_ENDED.encode() + b'"}\n\n'
    )
    # Past its old end, the other stream has sent nothing but its opening: still open.
    with pytest.raises(TimeoutError):
        await goes_on.read_until(OPENING + b"more", seconds=0.5)
    assert (goes_on.body, goes_on.ended) == (OPENING, False)
    await goes_on.disconnect()
