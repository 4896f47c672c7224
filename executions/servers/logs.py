"""Tokens out of servers' logs: the value of every ``token`` query parameter, redacted.

``?token=`` stays for AutoGPT's clients, and both servers log request paths with their query
strings; each server's adapter routes its log lines through `redact_query_tokens`.
"""

import re
from urllib.parse import unquote_plus

REDACTED = "[redacted]"
# One query parameter, after "?" or "&": its name (percent-encoded or not) and its value, which
# ends at the next parameter, a fragment, a space or a quote (uvicorn writes " as %22).
_PARAMETER = re.compile(r"(?P<start>[?&](?P<name>[^=&#\s\"?]*)=)(?P<value>[^&#\s\"]*)")


def redact_query_tokens(text: str) -> str:
    """`text` with the value of each ``token`` query parameter replaced by ``[redacted]``."""
    if "=" not in text:
        return text

    def redact(match: re.Match[str]) -> str:
        if match["value"] and unquote_plus(match["name"]) == "token":
            return match["start"] + REDACTED
        return match[0]

    return _PARAMETER.sub(redact, text)


def redacted(value: object) -> object:
    return redact_query_tokens(value) if isinstance(value, str) else value
