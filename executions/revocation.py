"""Losing access while connected: revocations sent to every process, and the re-check.

A connection is authenticated once, at the handshake. What can take that right away later is
announced here, after its transaction commits, to the ``executions.revocations`` group of the
channel layer, which every serving process's fan-out joins while it has connections:

- a password change or deactivation, or the user's deletion: every connection of the user;
- a logout: the connections opened with that session.

Each process closes the matching connections with 4001 and the reason. A token's or a session's
expiry needs no message: each connection keeps a timer (consumers.py). And since a message can
be lost (the layer down at that moment, a change made with ``QuerySet.update()``, which sends
no signal), every subscribe also checks the user and the credential again (`refusal_now`).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_init, post_save
from django.utils.crypto import constant_time_compare

from executions import metrics
from executions.protocol import ErrorText
from executions.tokens import VerifiedToken, password_fingerprint

logger = logging.getLogger(__name__)

# Sends started from the event loop; it keeps only weak references to tasks.
_SENDING: set["asyncio.Future[None]"] = set()

REVOCATIONS_GROUP = "executions.revocations"
REVOKE_EVENT = "executions.revoke"
# The scope key of the token a connection was authenticated with (absent: its session).
TOKEN_KEY = "executions_token"


@dataclass(frozen=True, slots=True)
class Credential:
    """How a connection was authenticated, as far as revoking it goes."""

    user_key: str
    session_key: str | None  # None for a token
    expires_at: float | None  # a Unix time; None when it never expires by itself


def revocation_event(user_key: str, reason: str, session_key: str | None = None) -> dict[str, Any]:
    """The layer message that closes a user's connections (only one session's, if given)."""
    return {
        "type": REVOKE_EVENT,
        "user_id": user_key,
        "session_key": session_key,
        "reason": reason,
    }


def applies_to(event: dict[str, Any], credential: Credential) -> bool:
    """Whether a revocation closes a connection authenticated with `credential`."""
    if event["user_id"] != credential.user_key:
        return False
    wanted_session = event.get("session_key")
    return wanted_session is None or wanted_session == credential.session_key


def announce(user_key: str, reason: str, session_key: str | None = None) -> None:
    """Send a revocation to every process once the current transaction commits."""
    event = revocation_event(user_key, reason, session_key)
    transaction.on_commit(lambda: _send(event))


def _send(event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        try:
            async_to_sync(layer.group_send)(REVOCATIONS_GROUP, event)
        except Exception as error:
            _failed(event, error)
        return
    # Called from async code (a signal sent on the event loop): send without blocking it.
    task = asyncio.ensure_future(layer.group_send(REVOCATIONS_GROUP, event))
    _SENDING.add(task)
    task.add_done_callback(partial(_sent, event))


def _sent(event: dict[str, Any], task: "asyncio.Future[None]") -> None:
    _SENDING.discard(task)
    error = None if task.cancelled() else task.exception()
    if error is not None:
        _failed(event, error)


def _failed(event: dict[str, Any], error: BaseException) -> None:
    metrics.LAYER_FAILURES.labels("group_send").inc()
    logger.error(
        "could not announce a revocation (%s) of user %s: open connections close at their "
        "next subscribe instead",
        event["reason"],
        event["user_id"],
        exc_info=error,
    )


# --- what takes access away ------------------------------------------------------------------

_REMEMBERED = "_executions_access"
_UNKNOWN = object()


def _loaded(instance: AbstractBaseUser) -> tuple[object, object]:
    # From the instance's __dict__ only: reading a deferred field (.only(), .defer()) would load
    # it with refresh_from_db, whose new instance's post_init would read it again, and so on.
    fields = instance.__dict__
    return fields.get("password", _UNKNOWN), fields.get("is_active", _UNKNOWN)


def _remember_access(sender: Any, instance: AbstractBaseUser, **kwargs: Any) -> None:
    # What the row held when loaded, to tell on save what changed (no extra query).
    instance.__dict__[_REMEMBERED] = _loaded(instance)


def _access_changed(sender: Any, instance: AbstractBaseUser, created: bool, **kwargs: Any) -> None:
    before = instance.__dict__.get(_REMEMBERED)
    _remember_access(sender, instance)
    if created or before is None:
        return
    (password_before, active_before), (password, active) = before, _loaded(instance)
    # A field not loaded on either side is not compared: the next subscribe checks it.
    if active_before is True and active is False:
        announce(str(instance.pk), ErrorText.USER_DEACTIVATED)
    elif _UNKNOWN not in (password_before, password) and password_before != password:
        announce(str(instance.pk), ErrorText.PASSWORD_CHANGED)


def _user_deleted(sender: Any, instance: AbstractBaseUser, **kwargs: Any) -> None:
    announce(str(instance.pk), ErrorText.USER_DELETED)


def _logged_out(sender: Any, request: Any, user: AbstractBaseUser | None, **kwargs: Any) -> None:
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is not None and session_key:
        announce(str(user.pk), ErrorText.SESSION_ENDED, session_key)


def connect_signals() -> None:
    """Watch the user model for what revokes access (called from the app's ready())."""
    user_model = get_user_model()
    post_init.connect(_remember_access, sender=user_model, dispatch_uid="executions.access")
    post_save.connect(_access_changed, sender=user_model, dispatch_uid="executions.access")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="executions.access")
    user_logged_out.connect(_logged_out, dispatch_uid="executions.access")


# --- what a connection holds, and the re-check ---------------------------------------------


def credential_of(scope: dict[str, Any]) -> Credential:
    """How the connection of `scope` was authenticated (a token, else its session).

    Reads the session from its store: call it from a thread (database_sync_to_async).
    """
    user_key = str(scope["user"].pk)
    token: VerifiedToken | None = scope.get(TOKEN_KEY)
    if token is not None:
        return Credential(user_key, None, token.expires_at)
    session = scope["session"]
    return Credential(user_key, session.session_key, _session_expiry(session))


def session_store() -> Any:
    """The session engine's SessionStore class."""
    return import_module(settings.SESSION_ENGINE).SessionStore


def _session_expiry(session: Any) -> float | None:
    store = session_store()
    if not session.session_key:
        return None
    if hasattr(store, "get_model_class"):
        # Database-backed sessions: the row says when the session ends.
        row = store.get_model_class()._default_manager.filter(session_key=session.session_key)
        expires = row.values_list("expire_date", flat=True).first()
        return expires.timestamp() if expires is not None else time.time()
    return float(session.get_expiry_date().timestamp())


def refusal_now(scope: dict[str, Any]) -> str | None:
    """Why the connection's user or credential no longer stands, or None. Runs queries.

    When they stand, the user read now replaces the scope's, so that the subscribe policy sees
    the user as they are (staff, groups, permissions), not as they were at the handshake.
    """
    user_model = get_user_model()
    user = user_model._default_manager.filter(pk=scope["user"].pk).first()
    if user is None:
        return ErrorText.USER_DELETED
    if not user.is_active:
        return ErrorText.USER_DEACTIVATED
    refusal = _credential_refusal(scope, user)
    if refusal is None:
        scope["user"] = user
    return refusal


def _credential_refusal(scope: dict[str, Any], user: AbstractBaseUser) -> str | None:
    token: VerifiedToken | None = scope.get(TOKEN_KEY)
    if token is not None:
        if token.expires_at <= time.time():
            return ErrorText.TOKEN_EXPIRED
        if not constant_time_compare(token.fingerprint, password_fingerprint(user)):
            return ErrorText.PASSWORD_CHANGED
        return None
    return _session_refusal(scope["session"], user)


def _session_refusal(session: Any, user: AbstractBaseUser) -> str | None:
    # A fresh read of the session from its store: a logout deleted it, an expiry ended it.
    key = session.session_key
    stored = session_store()(session_key=key).load() if key else {}
    if str(stored.get(SESSION_KEY)) != str(user.pk):
        return ErrorText.SESSION_ENDED
    if not constant_time_compare(
        str(stored.get(HASH_SESSION_KEY, "")), user.get_session_auth_hash()
    ):
        return ErrorText.PASSWORD_CHANGED
    return None


# Runs a function with arguments in a thread and awaits its result (each caller has its way).
InThread = Callable[..., Awaitable[Any]]


class ExpiryWatch:
    """Revokes a connection or a stream when its credential expires, at that second.

    A token's end is final. A session's end moves whenever the session is saved again: when it
    comes, the session is read once more, and the watch either revokes or waits for the new end.
    """

    def __init__(self, scope: dict[str, Any], revoke: Callable[[str], None], in_thread: InThread):
        self._scope = scope
        self._revoke = revoke
        self._in_thread = in_thread
        self._timer: asyncio.TimerHandle | None = None
        self._check: asyncio.Future[None] | None = None

    def arm(self, credential: Credential) -> None:
        if credential.expires_at is None:
            return
        delay = max(0.0, credential.expires_at - time.time())
        self._timer = asyncio.get_running_loop().call_later(delay, self._expired, credential)

    def cancel(self) -> None:
        for pending in (self._timer, self._check):
            if pending is not None:
                pending.cancel()
        self._timer = self._check = None

    def _expired(self, credential: Credential) -> None:
        if credential.session_key is None:
            self._revoke(ErrorText.TOKEN_EXPIRED)
            return
        self._check = asyncio.ensure_future(self._check_session_end())

    async def _check_session_end(self) -> None:
        try:
            refusal = await self._in_thread(refusal_now, self._scope)
        except Exception:
            # The database did not answer: end it rather than outlive the session.
            logger.exception("checking whether a session has ended failed")
            refusal = ErrorText.SESSION_ENDED
        if refusal is not None:
            self._revoke(refusal)
            return
        credential = await self._in_thread(credential_of, self._scope)
        if credential.expires_at is not None and credential.expires_at > time.time():
            self.arm(credential)
