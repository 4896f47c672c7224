from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"
    verbose_name = "Executions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from executions import (
            checks,  # noqa: F401  (registers the system checks)
            writers,  # noqa: F401  (SQLite's automatic checkpoint, see there)
        )
        from executions.revocation import connect_signals

        connect_signals()
