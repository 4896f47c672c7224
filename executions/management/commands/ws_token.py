from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from executions.tokens import mint_token


class Command(BaseCommand):
    help = "Print a WebSocket token for a user (append it to the URL as ?token=...)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")
        parser.add_argument(
            "--create-user", action="store_true", help="create the user (no password) if missing"
        )

    def handle(
        self, *args: Any, username: str, ttl: int | None, create_user: bool, **kw: Any
    ) -> None:
        if ttl is not None and ttl <= 0:
            raise CommandError("--ttl must be a positive number of seconds.")
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            if not create_user:
                raise CommandError(
                    f"No user named {username!r}; pass --create-user to create one."
                ) from None
            user = user_model._default_manager.create_user(username=username)
        self.stdout.write(mint_token(user, ttl).token)
