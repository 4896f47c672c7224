"""Graceful shutdown under daphne: tell every client to reconnect (1012) before the process exits.

daphne cancels its applications at shutdown and lets the reactor drop their sockets, so clients
see an abnormal closure (1006) and cannot tell a restart from a crash. This hook runs first: it
sends each open WebSocket a close frame with 1012 (service restart), which the ASGI close message
cannot carry under daphne, then gives the clients a moment to answer. uvicorn sends 1012 itself.
"""

import sys
import weakref
from typing import Any

GRACE_SECONDS = 1.0
RESTART_REASON = b"Server restarting: reconnect, and subscribe with since to resume."

_open_protocols: "weakref.WeakSet[Any]" = weakref.WeakSet()
_installed = False


def track(protocol: Any) -> None:
    """Remember a daphne WebSocket protocol until it goes away."""
    _open_protocols.add(protocol)


def tell_clients_to_reconnect() -> int:
    """Send 1012 to every open WebSocket of this process; return how many were told."""
    told = 0
    for protocol in list(_open_protocols):
        if getattr(protocol, "state", None) == getattr(protocol, "STATE_OPEN", object()):
            protocol.sendCloseFrame(code=1012, reasonUtf8=RESTART_REASON, isReply=False)
            told += 1
    return told


def install_daphne_shutdown_hook() -> None:
    """Under daphne, run tell_clients_to_reconnect when the reactor starts shutting down."""
    global _installed
    if _installed or "daphne.server" not in sys.modules:
        return
    from twisted.internet import reactor, task

    def before_shutdown() -> Any:
        if tell_clients_to_reconnect():
            return task.deferLater(reactor, GRACE_SECONDS, lambda: None)
        return None

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)  # type: ignore[arg-type]
    _installed = True
