"""Named failures of the app, each with a message that says what to do."""


class ExecutionsError(Exception):
    """Base class of the app's own errors."""


class InvalidToken(ExecutionsError):
    """The WebSocket token is malformed, forged, or names no active user."""

    def __init__(self) -> None:
        super().__init__("Invalid token")


class TokenExpired(ExecutionsError):
    """The WebSocket token was genuine but its lifetime is over."""

    def __init__(self) -> None:
        super().__init__("Token expired")


class PublishNotDelivered(ExecutionsError):
    """A publish could not reach any subscriber from this process."""
