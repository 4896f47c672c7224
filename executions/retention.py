"""Applying the configured retention to the stored history."""

from datetime import timedelta

from executions import conf, history


def configured_limits() -> tuple[int | None, timedelta | None]:
    max_events = conf.get("EXECUTIONS_HISTORY_MAX_EVENTS")
    max_age_days = conf.get("EXECUTIONS_HISTORY_MAX_AGE_DAYS")
    max_age = timedelta(days=max_age_days) if max_age_days is not None else None
    return max_events, max_age


def prune_configured() -> history.PruneReport:
    """Prune every graph's history down to the configured retention."""
    max_events, max_age = configured_limits()
    return history.prune(max_events, max_age)
