"""Make daphne enforce the inbound message limit itself, before it buffers a byte more.

daphne takes its limit only from the command line (1 MiB by default), so the application
alone would see, and daphne would buffer, messages up to that size. Under daphne, the WebSocket
factory's options are clamped to our limit: autobahn then refuses a frame as soon as its header
announces too many bytes, closing with 1009 (message too big) and a reason. Other servers
are left alone; the consumer's own check still closes with 4009 there.
"""

import sys
from typing import Any

_PATCH_MARK = "_executions_max_message_bytes"
_SIZE_OPTIONS = ("maxMessagePayloadSize", "maxFramePayloadSize")


def limit_daphne_messages(max_bytes: int) -> None:
    """Cap daphne's WebSocket message and frame sizes at `max_bytes`, if daphne is serving."""
    if "daphne.server" not in sys.modules:
        return
    from daphne.ws_protocol import WebSocketFactory

    if getattr(WebSocketFactory, _PATCH_MARK, None) is not None:
        setattr(WebSocketFactory, _PATCH_MARK, max_bytes)
        return
    original = WebSocketFactory.setProtocolOptions

    def set_protocol_options(self: Any, *args: Any, **options: Any) -> Any:
        limit = getattr(WebSocketFactory, _PATCH_MARK)
        for name in _SIZE_OPTIONS:
            given = options.get(name)
            if given is not None:
                options[name] = limit if given <= 0 else min(given, limit)
        # Send the 1009 close frame (with its reason) instead of dropping the TCP connection.
        options.setdefault("failByDrop", False)
        return original(self, *args, **options)

    WebSocketFactory.setProtocolOptions = set_protocol_options
    setattr(WebSocketFactory, _PATCH_MARK, max_bytes)
