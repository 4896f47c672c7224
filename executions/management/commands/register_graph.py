from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from executions.models import Graph
from executions.schemas import MAX_GRAPH_ID_LENGTH


class Command(BaseCommand):
    help = "Register a graph and its owner, who may then subscribe to its executions."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("graph_id")
        parser.add_argument("--owner", required=True, help="username of the owner")
        parser.add_argument("--name", default="", help="a human-readable name")

    def handle(self, *args: Any, graph_id: str, owner: str, name: str, **kw: Any) -> None:
        if not graph_id or len(graph_id) > MAX_GRAPH_ID_LENGTH:
            raise CommandError(f"A graph id must be 1 to {MAX_GRAPH_ID_LENGTH} characters long.")
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(owner)
        except user_model.DoesNotExist:
            raise CommandError(f"No user named {owner!r}.") from None
        graph, created = Graph.objects.update_or_create(
            pk=graph_id, defaults={"owner": user, "name": name}
        )
        verb = "Registered" if created else "Updated"
        self.stdout.write(f"{verb} graph {graph.pk!r} owned by {owner}.")
