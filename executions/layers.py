"""The channel-layer configurations this app is tested with, built in one place.

Imported by settings, so it imports nothing from Django.
"""

from typing import Any

IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"
REDIS_LAYERS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}

# Both layers silently drop messages past a channel's capacity (100 by default); this lets a
# burst of thousands of events to one subscriber through.
CHANNEL_CAPACITY = 20_000

# redis-py 8 reads with a 5 s socket timeout by default, the same as the core layer's blocking
# BZPOPMIN, so an idle consumer's receive would fail every 5 s (channels_redis issue 422).
# Reads wait longer than that; connecting still fails fast when Redis is down.
REDIS_SOCKET_TIMEOUT = 30
REDIS_CONNECT_TIMEOUT = 5


def channel_layer_config(
    redis_url: str = "", kind: str = "pubsub", prefix: str = "asgi"
) -> dict[str, Any]:
    """Return a CHANNEL_LAYERS entry: in-memory without a Redis URL, else the named Redis layer."""
    if not redis_url:
        return {"BACKEND": IN_MEMORY_LAYER, "CONFIG": {"capacity": CHANNEL_CAPACITY}}
    if kind not in REDIS_LAYERS:
        raise ValueError(f"The Redis layer must be one of {sorted(REDIS_LAYERS)}, not {kind!r}.")
    host = {
        "address": redis_url,
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
    }
    config: dict[str, Any] = {"hosts": [host], "prefix": prefix}
    if kind == "core":
        config["capacity"] = CHANNEL_CAPACITY
    return {"BACKEND": REDIS_LAYERS[kind], "CONFIG": config}
