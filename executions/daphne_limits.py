"""Make daphne apply the app's WebSocket settings, which it otherwise takes from its command line.

- Inbound size: daphne's limit defaults to 1 MiB, so daphne would buffer, and the application
  see, messages up to that size. The WebSocket factory's options are clamped to our limit:
  autobahn refuses a frame as soon as its header announces too many bytes, closing with 1009
  (message too big) and a reason. Other servers are left alone; the consumer's own check still
  closes with 4009 there.
- Protocol pings: daphne pings every WebSocket every ``ping_interval`` seconds and closes one
  that has not answered within ``ping_timeout``; both come from the settings here, so half-open
  sockets are noticed on the schedule the project chose.
- Form bodies: Twisted parses urlencoded and multipart POST bodies into ``request.args``, which
  daphne never reads (the application gets the raw body). Turned off: it cost every POST to
  the ingest endpoint tens of microseconds of email-header parsing, and a large multipart
  body would be parsed inside the reactor, stalling every connection of the process.
"""

import functools
import sys
from dataclasses import dataclass
from typing import Any

_SIZE_OPTIONS = ("maxMessagePayloadSize", "maxFramePayloadSize")
# How long a closing connection waits for the client's close frame before dropping the socket.
# autobahn's 1 s is too short for a slow consumer, whose 4008 sits behind the frames it has not
# read yet: with a few seconds, a client that reads again learns why it was closed.
CLOSE_HANDSHAKE_SECONDS = 5


@dataclass
class DaphneWebSocketSettings:
    max_message_bytes: int
    ping_interval: float
    ping_timeout: float


_applied: DaphneWebSocketSettings | None = None


def configure_daphne(settings: DaphneWebSocketSettings) -> None:
    """Have daphne's WebSocket factory use these settings, if daphne is serving."""
    global _applied
    if "daphne.server" not in sys.modules:
        return
    from daphne.ws_protocol import WebSocketFactory

    first_time = _applied is None
    _applied = settings
    if not first_time:
        return
    original = WebSocketFactory.setProtocolOptions

    def set_protocol_options(self: Any, *args: Any, **options: Any) -> Any:
        chosen = _applied
        if chosen is not None:
            for name in _SIZE_OPTIONS:
                given = options.get(name)
                if given is not None:
                    limit = chosen.max_message_bytes
                    options[name] = limit if given <= 0 else min(given, limit)
            options["autoPingTimeout"] = chosen.ping_timeout
            options["closeHandshakeTimeout"] = CLOSE_HANDSHAKE_SECONDS
            # daphne's timeout checker reads the interval from its Server, every 2 s.
            self.server_class.ping_interval = chosen.ping_interval
        # Send the 1009 close frame (with its reason) instead of dropping the TCP connection.
        options.setdefault("failByDrop", False)
        return original(self, *args, **options)

    WebSocketFactory.setProtocolOptions = set_protocol_options
    _skip_form_parsing()


def _skip_form_parsing() -> None:
    from daphne.http_protocol import HTTPFactory, WebRequest

    request_factory = functools.partial(WebRequest, parsePOSTFormSubmission=False)
    original = HTTPFactory.buildProtocol

    def build_protocol(self: Any, addr: Any) -> Any:
        protocol = original(self, addr)
        protocol.requestFactory = request_factory
        return protocol

    HTTPFactory.buildProtocol = build_protocol
