"""System checks that warn about settings unsafe for production (``check --deploy``)."""

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connection

from executions import conf, origins
from executions.layers import IN_MEMORY_LAYER


def layer_backend() -> str:
    return str(getattr(settings, "CHANNEL_LAYERS", {}).get("default", {}).get("BACKEND", ""))


@register(Tags.security, deploy=True)
def check_channel_layer(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    if settings.DEBUG or layer_backend() != IN_MEMORY_LAYER:
        return []
    return [
        Warning(
            "The in-memory channel layer serves one process only: events published by other "
            "processes (workers, other daphne processes) never reach this one's subscribers.",
            hint="Set REDIS_URL to use channels-redis.",
            id="executions.W001",
        )
    ]


@register(Tags.security, deploy=True)
def check_ingest_token(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    token = conf.get("EXECUTIONS_INGEST_TOKEN")
    if token and len(token) >= 24:
        return []
    return [
        Warning(
            "EXECUTIONS_INGEST_TOKEN is missing or shorter than 24 characters: POST "
            "/api/executions is refused, or guarded by a guessable secret.",
            hint="Set EXECUTIONS_INGEST_TOKEN to a long random value, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'.",
            id="executions.W002",
        )
    ]


@register(Tags.security)
def check_allowed_origins(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    # Entries that are not exact origins are never matched (executions.origins): say so.
    return [
        Error(
            f"EXECUTIONS_ALLOWED_ORIGINS: {problem}",
            hint="List full origins, each scheme://host[:port] exactly as a browser sends it "
            'in its Origin header, e.g. ["https://app.example.com", "http://localhost:3000"]; '
            "no wildcard, path or trailing slash. The site's own origin needs no entry.",
            id="executions.E002",
        )
        for problem in origins.entries_problems(conf.get("EXECUTIONS_ALLOWED_ORIGINS"))
    ]


SUPPORTED_DATABASE_VENDORS = ("sqlite", "postgresql")


@register(Tags.compatibility)
def check_database_vendor(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    # history.py numbers events with INSERT .. ON CONFLICT .. RETURNING (the vendor is known
    # from the settings, no connection is made).
    vendor = connection.vendor
    if vendor in SUPPORTED_DATABASE_VENDORS:
        return []
    return [
        Error(
            f"The executions app stores its history on SQLite or PostgreSQL, not {vendor}.",
            hint="Point the default database at SQLite or PostgreSQL.",
            id="executions.E001",
        )
    ]


@register(Tags.security)
def check_metrics_allowed(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    # A malformed setting would make /metrics fail at every scrape: say so at startup.
    from executions import access

    try:
        access.parse(conf.get("EXECUTIONS_METRICS_ALLOWED"))
    except ValueError as exc:
        return [
            Error(
                f"EXECUTIONS_METRICS_ALLOWED: {exc}.",
                hint='For example {"networks": ["127.0.0.1", "::1", "10.0.0.0/8"], "token": '
                '"<a long random value>"}; either key may be left out.',
                id="executions.E003",
            )
        ]
    return []
