import json
import sys
from argparse import ArgumentParser, FileType
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError
from pydantic import TypeAdapter, ValidationError

from executions.checks import layer_backend
from executions.events import send_execution_results_sync
from executions.layers import IN_MEMORY_LAYER
from executions.schemas import ExecutionResult

_results = TypeAdapter(ExecutionResult | list[ExecutionResult])


class Command(BaseCommand):
    help = "Publish an execution result, or an array of them, from a JSON file or stdin."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("file", nargs="?", type=FileType("r"), default=sys.stdin)

    def handle(self, *args: Any, file: TextIO, **kw: Any) -> None:
        if layer_backend() == IN_MEMORY_LAYER:
            raise CommandError(
                "Not published: the in-memory channel layer only reaches subscribers in this "
                "same process, and this command runs in a process of its own. Set REDIS_URL "
                "(for the server and this command), or POST the JSON to /api/executions."
            )
        try:
            parsed = _results.validate_python(json.load(file))
        except (ValueError, ValidationError) as exc:
            raise CommandError(f"Invalid execution result: {exc}") from exc
        results = parsed if isinstance(parsed, list) else [parsed]
        numbers = send_execution_results_sync(results)
        self.stdout.write(f"Published {len(numbers)} execution result(s).")
