"""Named failures of the app, each with a message that says what to do."""

from collections.abc import Sequence
from typing import Any

from executions.protocol import ErrorText


class ExecutionsError(Exception):
    """Base class of the app's own errors."""


class InvalidToken(ExecutionsError):
    """The WebSocket token is malformed, forged, or names no active user."""

    def __init__(self) -> None:
        super().__init__("Invalid token")


class TokenExpired(ExecutionsError):
    """The WebSocket token was genuine but its lifetime is over."""

    def __init__(self) -> None:
        super().__init__(ErrorText.TOKEN_EXPIRED)


class PublishNotDelivered(ExecutionsError):
    """Results were stored, but the channel layer failed to send them to live subscribers."""

    def __init__(self, undelivered: Sequence[Any]) -> None:
        self.undelivered = list(undelivered)
        numbers = ", ".join(f"{event.graph_id}#{event.seq}" for event in self.undelivered[:5])
        more = "" if len(self.undelivered) <= 5 else f" and {len(self.undelivered) - 5} more"
        super().__init__(
            f"The channel layer did not take {numbers}{more}: they are stored, and reach "
            "subscribers that resume with since, but not the live stream. Do not publish them "
            "again; check the channel layer (Redis)."
        )


class BatchNotStored(ExecutionsError):
    """The transaction that was to store this publish, with others made at the same moment,
    failed: nothing of it is stored or sent. Publishing again is safe, except after a connection
    lost during the commit itself, whose outcome the database alone knows (the history shows
    whether the events are there)."""

    def __init__(self, publishes: int, events: int, cause: BaseException) -> None:
        self.publishes = publishes
        self.events = events
        super().__init__(
            f"Not stored: the database refused the batch this publish was committed with "
            f"({publishes} publish(es), {events} event(s)): {type(cause).__name__}: {cause}. "
            "Nothing of the batch was stored or sent; publish again once the database answers."
        )
