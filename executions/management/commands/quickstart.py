import secrets
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from executions import conf
from executions.models import Graph
from executions.tokens import mint_token


class Command(BaseCommand):
    help = "Debug mode only: create a demo user and graph, then print how to connect and publish."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--username", default="demo")
        parser.add_argument("--graph", default="demo")

    def handle(self, *args: Any, base_url: str, username: str, graph: str, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("quickstart creates a login for anyone to use: debug mode only.")
        user_model = get_user_model()
        user, created = user_model._default_manager.get_or_create(username=username)
        if created:
            password = secrets.token_urlsafe(12)
            user.set_password(password)
            user.save()
            login = f"{username} / {password}   (shown once; reset: manage.py changepassword)"
        else:
            login = f"{username} (password shown when it was created)"
        Graph.objects.get_or_create(pk=graph, defaults={"owner": user, "name": "Demo graph"})
        token = mint_token(user, ttl_seconds=24 * 3600).token
        base_url = base_url.rstrip("/")
        ws_url = base_url.replace("http", "ws", 1) + reverse("executions-websocket")
        dashboard = base_url + reverse("executions-index")
        docs = base_url + reverse("executions-api:openapi-view")
        ingest_url = base_url + reverse("executions-api:ingest")
        ingest = conf.get("EXECUTIONS_INGEST_TOKEN") or "<set EXECUTIONS_INGEST_TOKEN>"
        self.stdout.write(
            f"""
  Server:     {dashboard}        login: {login}
  WebSocket:  {ws_url}?token={token}
  API docs:   {docs}

  Watch graph '{graph}' (another terminal):
    .venv/bin/python -m websockets '{ws_url}?token={token}'
    then type: {{"method":"subscribe","data":{{"graph_id":"{graph}"}}}}

  Publish a first event (a third terminal):
    curl -X POST {ingest_url} -H 'Authorization: Bearer {ingest}' \\
         -H 'Content-Type: application/json' --data @examples/execution_result.json

  Or run a demo graph, and watch it in the terminal:
    DJANGO_DEBUG=1 EXECUTIONS_INGEST_TOKEN={ingest} \\
        .venv/bin/python manage.py run_demo_graph --graph {graph} --url {base_url}
    DJANGO_DEBUG=1 .venv/bin/python manage.py watch_executions {graph} --user {username} \\
        --url {ws_url}
"""
        )
