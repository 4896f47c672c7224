"""Replies and close codes of the WebSocket protocol, built in one place."""

import functools
from typing import Any, Final

from executions.schemas import Methods, WsMessage


class CloseCode:
    """Application close codes; daphne only lets an application send 1000 or 3000-4999.

    Plain ints, not an IntEnum: autobahn, under daphne, rejects any close code whose type is
    not exactly int and closes with 1011 instead.
    """

    NORMAL: Final = 1000
    UNAUTHENTICATED: Final = 4001
    SLOW_CONSUMER: Final = 4008
    MESSAGE_TOO_BIG: Final = 4009
    SERVER_FULL: Final = 4013
    RATE_LIMITED: Final = 4029
    TOO_MANY_CONNECTIONS: Final = 4030


class ErrorText:
    """The sentences error frames say; clients may match on them."""

    NOT_JSON = "Message is not valid JSON."
    NOT_OBJECT = "Message must be a JSON object."
    BINARY = "Binary frames are not supported; send JSON text frames."
    SUBSCRIPTION_DATA_MISSING = "Subscription data missing"
    INVALID_GRAPH_ID = (
        "graph_id must be a non-empty string of at most 255 characters, "
        "without NUL or lone surrogates."
    )
    INVALID_GRAPH_EXEC_ID = (
        "graph_exec_id must be a non-empty string of at most 255 characters, "
        "without NUL or lone surrogates."
    )
    INVALID_SINCE = "since must be a non-negative integer (a sequence number)."
    INVALID_SNAPSHOT = "snapshot must be true or false."
    NOT_PROCESSED = "Message type is not processed by the server"
    NOT_ALLOWED = "Not allowed to subscribe to this graph."
    # The same for an execution that does not exist and one of a graph the user may not see.
    NO_SUCH_EXECUTION = "Graph execution not found."
    MISSING_TOKEN = "Missing authentication token"
    # Why an open connection loses its authentication (close 4001, after an error frame).
    TOKEN_EXPIRED = "Token expired"
    SESSION_ENDED = "Session ended: log in again"
    PASSWORD_CHANGED = "Credentials revoked: the password changed"
    USER_DEACTIVATED = "Credentials revoked: the user was deactivated"
    USER_DELETED = "Credentials revoked: the user was deleted"
    UNKNOWN_METHOD = "Unknown method; expected one of: subscribe, unsubscribe, heartbeat."
    MESSAGE_TOO_BIG = "Message too big: the limit is {limit} bytes."
    TOO_MANY_SUBSCRIPTIONS = (
        "Too many subscriptions: at most {limit} per connection; unsubscribe from one first."
    )
    SLOW_CONSUMER = (
        "Too slow: the client fell behind the stream. Reconnect and subscribe with since set "
        "to the last seq received to get everything missed."
    )
    RATE_LIMITED = "Too many messages: at most {rate} a second; this one was ignored."
    RATE_LIMIT_ABUSED = "Rate limit exceeded again and again: closing."
    TOO_MANY_CONNECTIONS = "Too many connections for this user: at most {limit}."
    SERVER_FULL = "This server is at its connection limit; try again later."


# A close frame carries at most 125 bytes: the 2-byte code and 123 bytes of UTF-8 reason.
MAX_CLOSE_REASON_BYTES = 123


def close_reason(text: str) -> str:
    """The reason as a close frame can carry it: cut to 123 bytes, between characters.

    The whole sentence travels in the error frame sent just before the close; a longer reason
    makes the websockets library (uvicorn's) refuse the close frame and drop the connection.
    """
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return text
    return encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def ack_frame(method: Methods, channel: str | None, data: dict[str, Any] | None = None) -> str:
    return WsMessage(method=method, data=data, success=True, channel=channel).model_dump_json()


# Frames up to this size are built once for all the subscribers they go to (numbered texts
# here, frame bytes in outbox.py); larger ones are rare and not worth keeping around.
CACHED_FRAME_LIMIT = 64 * 1024
# How many such frames stay built: a fan-out hands one event to every subscriber in turn.
CACHED_FRAMES = 16


def numbered_frame(frame: str, seq: int) -> str:
    """An event frame with its sequence number appended as the envelope's last key, ``seq``.

    Every numbered subscriber of a graph gets the same text: it is built once (and then its
    bytes, see outbox.wire_text_frame), unless it is large enough not to be worth keeping.
    """
    if len(frame) > CACHED_FRAME_LIMIT:
        return _numbered(frame, seq)
    return _cached_numbered(frame, seq)


def _numbered(frame: str, seq: int) -> str:
    return f'{frame[:-1]},"seq":{seq}}}'


_cached_numbered = functools.lru_cache(maxsize=CACHED_FRAMES)(_numbered)


def heartbeat_frame() -> str:
    return WsMessage(method=Methods.HEARTBEAT, data="pong", success=True).model_dump_json()


def error_frame(error: str, channel: str | None = None) -> str:
    return WsMessage(
        method=Methods.ERROR, success=False, channel=channel, error=error
    ).model_dump_json()


class ProtocolViolation(Exception):
    """A client frame the server cannot act on; answered with an error frame."""

    def __init__(self, kind: str, error: str, channel: str | None = None) -> None:
        super().__init__(error)
        self.kind = kind  # a short name for metrics: "not_json", "not_allowed", ...
        self.error = error
        self.channel = channel

    def frame(self) -> str:
        return error_frame(self.error, self.channel)
