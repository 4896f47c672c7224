import asyncio
from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from executions.extras import MissingExtra

try:
    from rich.console import Console
    from rich.text import Text
except ImportError as missing:
    raise MissingExtra("tail", "manage.py watch_executions") from missing

from executions.client import (
    AuthenticationFailed,
    ClientError,
    ConnectionLost,
    ConnectionState,
    SubscriptionRefused,
    connect,
)
from executions.schemas import ExecutionResult, ExecutionStatus
from executions.tokens import mint_token

STATUS_STYLES = {
    ExecutionStatus.INCOMPLETE: "magenta",
    ExecutionStatus.QUEUED: "cyan",
    ExecutionStatus.RUNNING: "bold yellow",
    ExecutionStatus.COMPLETED: "bold green",
    ExecutionStatus.FAILED: "bold red",
}
STATE_STYLES = {
    ConnectionState.CONNECTING: "dim",
    ConnectionState.CONNECTED: "green",
    ConnectionState.RECONNECTING: "yellow",
    ConnectionState.CLOSED: "dim",
    ConnectionState.FAILED: "red",
}


def event_line(seq: int | None, result: ExecutionResult) -> Text:
    """One event as a line: seq, time, status (coloured), node, block, execution, duration."""
    moment = result.end_time or result.start_time or result.queue_time or result.add_time
    if moment.tzinfo is not None:
        moment = moment.astimezone()  # the terminal's local time
    duration = ""
    if result.end_time is not None and result.start_time is not None:
        duration = f"{(result.end_time - result.start_time).total_seconds():.2f} s"
    return Text.assemble(
        (f"#{seq if seq is not None else '?':<6}", "dim"),
        " ",
        (moment.strftime("%H:%M:%S.%f")[:-3], "dim"),
        " ",
        (f"{result.status.value:<10}", STATUS_STYLES.get(result.status, "")),
        " ",
        (f"{result.node_id:<18}", "bold"),
        " ",
        (f"[{result.block_id}]", "dim"),
        " ",
        (f"exec {result.graph_exec_id[:8]}", "dim"),
        (f"  {duration}" if duration else "", ""),
    )


class Command(BaseCommand):
    help = (
        "Tail a graph's execution events live in the terminal, one coloured line per event; "
        "reconnects and resumes by itself. Ctrl-C to stop."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("graph_id")
        parser.add_argument(
            "--since", type=int, default=None, help="first replay the events after this seq"
        )
        parser.add_argument(
            "--snapshot",
            action="store_true",
            help="first show the latest state of every node of the latest execution",
        )
        parser.add_argument(
            "--url",
            default=None,
            help="the WebSocket URL (default: this project's WebSocket route on 127.0.0.1:8000)",
        )
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--token", help="a WebSocket token (manage.py ws_token USERNAME)")
        who.add_argument("--user", help="mint a token for this user from the local database")
        parser.add_argument(
            "--max-events", type=int, default=None, help="stop after this many events"
        )

    def handle(
        self,
        *args: Any,
        graph_id: str,
        since: int | None,
        snapshot: bool,
        url: str | None,
        token: str | None,
        user: str | None,
        max_events: int | None,
        **options: Any,
    ) -> None:
        if since is not None and since < 0:
            raise CommandError("--since must be zero or more.")
        if max_events is not None and max_events < 1:
            raise CommandError("--max-events must be 1 or more.")
        if user is not None:
            token = self._mint(user)
        assert token is not None
        if url is None:
            url = f"ws://127.0.0.1:8000{reverse('executions-websocket')}"
        self.console = self._console(self.stdout, options)
        self.status = self._console(self.stderr, options)
        try:
            asyncio.run(self._watch(url, token, graph_id, since, snapshot, max_events))
        except KeyboardInterrupt:
            self.status.print(Text("Stopped.", "dim"))
        except AuthenticationFailed as exc:
            raise CommandError(f"Authentication failed: {exc.reason}") from exc
        except SubscriptionRefused as exc:
            raise CommandError(f"Not allowed to watch graph {graph_id!r}: {exc.reason}") from exc
        except ConnectionLost as exc:
            raise CommandError(str(exc)) from exc
        except ClientError as exc:
            raise CommandError(f"Stopped by an error: {exc}") from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

    @staticmethod
    def _console(file: Any, options: dict[str, Any]) -> Console:
        """A rich console on one of the command's streams, honouring --no-color/--force-color."""
        return Console(
            file=file,
            highlight=False,
            soft_wrap=True,
            no_color=bool(options.get("no_color")),
            force_terminal=True if options.get("force_color") else None,
        )

    def _mint(self, username: str) -> str:
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"No user named {username!r}.") from None
        return mint_token(user).token

    def _on_state(self, state: ConnectionState, detail: str) -> None:
        self.status.print(Text(f"{state.value}: {detail}", STATE_STYLES.get(state, "")))

    async def _watch(
        self,
        url: str,
        token: str,
        graph_id: str,
        since: int | None,
        snapshot: bool,
        max_events: int | None,
    ) -> None:
        seen = 0
        async with connect(url, token=token, on_state=self._on_state) as stream:
            subscription = stream.subscribe(graph_id, since=since, snapshot=snapshot)
            self.status.print(Text(f"Watching graph {graph_id!r} (Ctrl-C to stop)", "dim"))
            async for result in subscription:
                self.console.print(event_line(subscription.position, result))
                seen += 1
                if max_events is not None and seen >= max_events:
                    break
