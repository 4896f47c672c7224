"""Who may read the operations endpoints: ``EXECUTIONS_METRICS_ALLOWED``.

The setting is a dict with two optional keys::

    EXECUTIONS_METRICS_ALLOWED = {
        "networks": ["127.0.0.0/8", "::1", "10.0.0.0/8"],  # client addresses or CIDR networks
        "token": "long-random-value",  # or a bearer token, from anywhere
    }

A request is served when its client address (``REMOTE_ADDR``: the peer, or what the server
took from a trusted proxy's ``X-Forwarded-For``) is in one of the networks, or when it sends
``Authorization: Bearer <token>`` with the configured token (compared in constant time). An
empty token allows nobody by token. The default allows localhost only.
"""

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from django.utils.crypto import constant_time_compare

from executions import conf

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SETTING = "EXECUTIONS_METRICS_ALLOWED"
KEYS = ("networks", "token")


@dataclass(frozen=True, slots=True)
class Allowed:
    networks: tuple[Network, ...]
    token: str


def parse(value: Any) -> Allowed:
    """The setting's meaning; ValueError naming what is wrong with it."""
    if not isinstance(value, Mapping):
        raise ValueError('expected a dict such as {"networks": ["127.0.0.1"], "token": ""}')
    unknown = sorted(str(key) for key in value if key not in KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; the keys are networks and token")
    networks = value.get("networks", ())
    if isinstance(networks, str) or not all(isinstance(item, str) for item in networks):
        raise ValueError("networks must be a list of addresses or CIDR networks (strings)")
    parsed: list[Network] = []
    for item in networks:
        try:
            parsed.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or a CIDR network") from None
    token = value.get("token", "") or ""
    if not isinstance(token, str):
        raise ValueError("token must be a string")
    return Allowed(tuple(parsed), token)


def metrics_allowed(request: HttpRequest) -> bool:
    """True when EXECUTIONS_METRICS_ALLOWED lets this request read the metrics."""
    allowed = parse(conf.get(SETTING))
    if allowed.token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and constant_time_compare(given.strip(), allowed.token):
            return True
    address = _client_address(request)
    return address is not None and any(address in network for network in allowed.networks)


def _client_address(request: HttpRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(str(request.META.get("REMOTE_ADDR") or "").strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1, as a dual-stack socket reports IPv4
    return address
