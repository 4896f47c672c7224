from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from executions import history
from executions.retention import configured_limits


class Command(BaseCommand):
    help = (
        "Delete stored execution events beyond each graph's last N or older than D days "
        "(EXECUTIONS_HISTORY_MAX_EVENTS, EXECUTIONS_HISTORY_MAX_AGE_DAYS). Safe while publishing."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--max-events", type=int, help="keep this many events per graph")
        parser.add_argument("--max-age-days", type=float, help="delete events older than this")

    def handle(
        self, *args: Any, max_events: int | None, max_age_days: float | None, **options: Any
    ) -> None:
        configured_events, configured_age = configured_limits()
        if max_events is not None and max_events < 0:
            raise CommandError("--max-events must be zero or more.")
        if max_age_days is not None and max_age_days < 0:
            raise CommandError("--max-age-days must be zero or more.")
        report = history.prune(
            max_events if max_events is not None else configured_events,
            timedelta(days=max_age_days) if max_age_days is not None else configured_age,
        )
        self.stdout.write(f"Pruned {report.deleted} event(s) across {report.graphs} graph(s).")
