"""Settings from the environment, deploy checks, and the management commands."""

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from executions.checks import check_database_vendor
from executions.models import Graph
from tests.conftest import make_result

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run manage.py in a fresh process with exactly the given DJANGO_* / EXECUTIONS_* env."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "EXECUTIONS_", "REDIS_URL", "DATABASE_URL"))
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_server_refuses_the_development_secret_outside_debug_mode() -> None:
    completed = manage("check")

    assert completed.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in completed.stderr


def test_debug_mode_runs_on_the_development_secret() -> None:
    completed = manage("check", DJANGO_DEBUG="1")

    assert completed.returncode == 0, completed.stderr


def test_deploy_checks_warn_about_what_is_unsafe_in_production() -> None:
    completed = manage("check", "--deploy", DJANGO_SECRET_KEY="django-insecure-" + "k" * 50)

    output = completed.stdout + completed.stderr
    assert "executions.W001" in output  # in-memory layer with debug off
    assert "executions.W002" in output  # no ingest token
    assert "security.W009" in output  # insecure secret key


def test_deploy_checks_are_quiet_about_a_configured_redis_and_token() -> None:
    completed = manage(
        "check",
        "--deploy",
        DJANGO_SECRET_KEY="a-long-random-production-secret-" + "x" * 40,
        REDIS_URL="redis://127.0.0.1:6379/0",
        EXECUTIONS_INGEST_TOKEN="t" * 32,
    )

    output = completed.stdout + completed.stderr
    assert "executions.W001" not in output
    assert "executions.W002" not in output


def test_an_unknown_redis_layer_is_a_configuration_error() -> None:
    completed = manage(
        "check",
        DJANGO_DEBUG="1",
        REDIS_URL="redis://127.0.0.1:6379/0",
        EXECUTIONS_REDIS_LAYER="carrier-pigeon",
    )

    assert completed.returncode != 0
    assert "EXECUTIONS_REDIS_LAYER" in completed.stderr


def test_the_databases_the_history_is_written_for_pass_the_checks() -> None:
    assert check_database_vendor(None) == []


def test_any_other_database_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # No MySQL driver is installed here, so the vendor is the one thing that can be swapped.
    monkeypatch.setattr(connection, "vendor", "mysql")

    (error,) = check_database_vendor(None)

    assert error.id == "executions.E001"
    assert "mysql" in error.msg


def test_register_graph_gives_the_owner_the_graph(alice: Any) -> None:
    out = StringIO()
    call_command("register_graph", "pipeline/β 1", "--owner", "alice", stdout=out)

    assert Graph.objects.get(pk="pipeline/β 1").owner == alice
    assert "Registered graph" in out.getvalue()


def test_register_graph_refuses_an_unknown_owner(transactional_db: None) -> None:
    with pytest.raises(CommandError, match="No user named"):
        call_command("register_graph", "g", "--owner", "nobody", stdout=StringIO())


def test_register_graph_refuses_an_overlong_id(alice: Any) -> None:
    with pytest.raises(CommandError, match="1 to 255"):
        call_command("register_graph", "g" * 256, "--owner", "alice", stdout=StringIO())


def test_publish_execution_says_plainly_that_the_in_memory_layer_reaches_nobody(
    tmp_path: Path,
) -> None:
    source = tmp_path / "result.json"
    source.write_text(make_result().model_dump_json())

    completed = manage("publish_execution", str(source), DJANGO_DEBUG="1")

    assert completed.returncode != 0
    assert "Not published" in completed.stderr
    assert "REDIS_URL" in completed.stderr
    assert "/api/executions" in completed.stderr


def test_publish_execution_rejects_invalid_json_with_the_bad_field(tmp_path: Path) -> None:
    source = tmp_path / "result.json"
    body = json.loads(make_result().model_dump_json())
    del body["node_id"]
    source.write_text(json.dumps(body))

    completed = manage(
        "publish_execution", str(source), DJANGO_DEBUG="1", REDIS_URL="redis://127.0.0.1:6379/0"
    )

    assert completed.returncode != 0
    assert "node_id" in completed.stderr


def test_quickstart_refuses_to_create_a_login_outside_debug_mode(settings: Any) -> None:
    settings.DEBUG = False
    with pytest.raises(CommandError, match="debug mode only"):
        call_command("quickstart", stdout=StringIO())


def test_quickstart_creates_a_demo_user_with_a_random_password_once(
    settings: Any, transactional_db: None
) -> None:
    from django.contrib.auth import get_user_model

    settings.DEBUG = True
    first, second = StringIO(), StringIO()
    call_command("quickstart", stdout=first)
    call_command("quickstart", stdout=second)

    password = first.getvalue().split("demo / ", 1)[1].split()[0]
    demo = get_user_model().objects.get(username="demo")
    assert demo.check_password(password)
    assert password not in second.getvalue()
    assert Graph.objects.get(pk="demo").owner == demo


# --- production ---------------------------------------------------------------------------

PRODUCTION_MARKER = "<!-- production-environment"


def documented_production_environment() -> dict[str, str]:
    """The README's production environment, with a fresh random value for each `<...>`."""
    import secrets

    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(PRODUCTION_MARKER))
    assert lines[start + 1].startswith("```"), "the marker must sit right above the block"
    env: dict[str, str] = {}
    for line in lines[start + 2 :]:
        if line.startswith("```"):
            break
        name, _, value = line.partition("=")
        if value.startswith("<") and value.endswith(">"):
            value = secrets.token_urlsafe(50)
        env[name] = value
    return env


def test_the_documented_production_environment_passes_the_deploy_checks() -> None:
    env = documented_production_environment()
    assert set(env) >= {
        "DJANGO_SECRET_KEY",
        "DJANGO_SECURE",
        "DJANGO_ALLOWED_HOSTS",
        "REDIS_URL",
        "EXECUTIONS_INGEST_TOKEN",
    }

    completed = manage("check", "--deploy", "--fail-level", "WARNING", **env)

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "System check identified no issues (0 silenced)." in completed.stdout


def test_without_django_secure_the_deploy_checks_ask_for_it() -> None:
    env = documented_production_environment()
    del env["DJANGO_SECURE"]

    completed = manage("check", "--deploy", "--fail-level", "WARNING", **env)

    output = completed.stdout + completed.stderr
    assert completed.returncode != 0
    for warning in ("W004", "W008", "W012", "W016"):  # HSTS, redirect, the two cookies
        assert f"security.{warning}" in output


def test_django_secure_turns_on_the_https_settings() -> None:
    script = (
        "from django.conf import settings as s; import json; print(json.dumps(["
        "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, "
        "s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD, "
        "s.SECURE_PROXY_SSL_HEADER]))"
    )
    secret = "a-long-random-production-secret-" + "x" * 40

    on = manage("shell", "--no-imports", "-c", script, DJANGO_SECRET_KEY=secret, DJANGO_SECURE="1")
    off = manage("shell", "--no-imports", "-c", script, DJANGO_SECRET_KEY=secret)

    assert on.returncode == 0, on.stderr
    assert json.loads(on.stdout) == [
        True,
        True,
        True,
        365 * 24 * 3600,
        True,
        True,
        ["HTTP_X_FORWARDED_PROTO", "https"],
    ]
    assert json.loads(off.stdout) == [False, False, False, 0, False, False, None]


def test_behind_the_proxy_https_is_served_and_plain_http_redirected_but_the_probes() -> None:
    script = (
        "from django.test import Client; c = Client(); https = {'X-Forwarded-Proto': 'https'}; "
        "print(c.get('/').status_code, c.get('/', headers=https).status_code, "
        "c.get('/healthz').status_code, c.get('/readyz').status_code, "
        "c.get('/metrics').status_code)"
    )

    completed = manage(
        "shell",
        "--no-imports",
        "-c",
        script,
        DJANGO_SECRET_KEY="a-long-random-production-secret-" + "x" * 40,
        DJANGO_SECURE="1",
        DJANGO_ALLOWED_HOSTS="testserver",
    )

    assert completed.returncode == 0, completed.stderr
    # / redirects over plain HTTP and is served over the proxy's HTTPS; the probes never move.
    assert completed.stdout.split() == ["301", "200", "200", "200", "200"]
