"""Signed, expiring WebSocket tokens for programs: Django's signing, no extra dependency."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core import signing
from django.utils.crypto import constant_time_compare

from executions import conf
from executions.exceptions import InvalidToken, TokenExpired

_SALT = "executions.ws-token"
# "." keeps tokens to unreserved URL characters, so they can be appended to a URL as they are.
_SEPARATOR = "."


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class VerifiedToken:
    """What a valid token says: whose it is, until when, and under which password."""

    user: AbstractBaseUser
    expires_at: float  # a Unix time
    fingerprint: str


def _signer() -> signing.Signer:
    return signing.Signer(salt=_SALT, sep=_SEPARATOR)


def password_fingerprint(user: AbstractBaseUser) -> str:
    # Changing the password (or disabling it) invalidates every token minted before.
    return user.get_session_auth_hash()[:16]


def mint_token(user: AbstractBaseUser, ttl_seconds: int | None = None) -> IssuedToken:
    """Return a token that authenticates `user` on the WebSocket for `ttl_seconds`."""
    ttl = conf.get("EXECUTIONS_TOKEN_TTL") if ttl_seconds is None else ttl_seconds
    if ttl <= 0:
        raise ValueError("A token's lifetime must be a positive number of seconds.")
    expires = int(time.time()) + ttl
    payload = {"u": str(user.pk), "e": expires, "p": password_fingerprint(user)}
    token = _signer().sign_object(payload)
    return IssuedToken(token=token, expires_at=datetime.fromtimestamp(expires, tz=UTC))


def user_for_token(token: str) -> AbstractBaseUser:
    """Return the active user a token names; raise InvalidToken or TokenExpired otherwise."""
    return verify_token(token).user


def verify_token(token: str) -> VerifiedToken:
    """Check a token against the database; raise InvalidToken or TokenExpired if it fails."""
    try:
        payload = _signer().unsign_object(token)
        user_pk, expires, fingerprint = payload["u"], int(payload["e"]), str(payload["p"])
    except (signing.BadSignature, KeyError, TypeError, ValueError) as exc:
        raise InvalidToken from exc
    user_model = get_user_model()
    try:
        user = user_model._default_manager.get(pk=user_pk)
    except (user_model.DoesNotExist, ValueError) as exc:
        raise InvalidToken from exc
    if not user.is_active or not constant_time_compare(fingerprint, password_fingerprint(user)):
        raise InvalidToken
    if expires <= time.time():
        raise TokenExpired
    return VerifiedToken(user=user, expires_at=float(expires), fingerprint=fingerprint)
