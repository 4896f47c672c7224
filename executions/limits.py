"""Per-connection and per-process limits: message rate, and connection counts."""

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from executions import conf
from executions.protocol import ErrorText


@dataclass(slots=True)
class TokenBucket:
    """Allows `rate` messages a second on average, and bursts of up to `burst`."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self) -> bool:
        """Spend one token if there is one; say whether the message may go through."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ConnectionCounter:
    """Open connections of this process, in total and per user."""

    def __init__(self) -> None:
        self.total = 0
        self.per_user: Counter[object] = Counter()

    def admit(self, user_key: object, max_total: int, max_per_user: int) -> str | None:
        """Count a new connection in, or return which limit refuses it ("process" or "user")."""
        if self.total >= max_total:
            return "process"
        if self.per_user[user_key] >= max_per_user:
            return "user"
        self.total += 1
        self.per_user[user_key] += 1
        return None

    def release(self, user_key: object) -> None:
        self.total -= 1
        self.per_user[user_key] -= 1
        if self.per_user[user_key] <= 0:
            del self.per_user[user_key]


# One event loop serves all of a process's connections, so a plain module-level counter is safe.
open_connections = ConnectionCounter()


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a new connection (WebSocket or SSE stream) is not let in."""

    limit: Literal["process", "user"]
    reason: str


def admit_connection(user_key: object) -> Refused | None:
    """Count a new connection in under the configured limits, or say which one refuses it."""
    max_per_user = conf.get("EXECUTIONS_MAX_CONNECTIONS_PER_USER")
    over = open_connections.admit(
        user_key, max_total=conf.get("EXECUTIONS_MAX_CONNECTIONS"), max_per_user=max_per_user
    )
    if over == "process":
        return Refused("process", ErrorText.SERVER_FULL)
    if over == "user":
        return Refused("user", ErrorText.TOO_MANY_CONNECTIONS.format(limit=max_per_user))
    return None
