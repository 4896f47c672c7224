"""Several processes publishing to one graph at once: numbers stay dense and unique."""

import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.servers import site_env

ROOT = Path(__file__).resolve().parent.parent
PUBLISHERS = 4
EVENTS_EACH = 150
POSTGRES_ADMIN_URL = os.environ.get(
    "POSTGRES_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

PUBLISH_SCRIPT = """
import sys
from executions.events import send_execution_result_sync
from tests.conftest import make_result

name, count = sys.argv[1], int(sys.argv[2])
for number in range(count):
    send_execution_result_sync(make_result(graph_id="contended", node_exec_id=f"{name}-{number}"))
"""


def postgres_or_skip() -> str:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2):
            return POSTGRES_ADMIN_URL
    except psycopg.OperationalError:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL does not answer at {POSTGRES_ADMIN_URL}")
        pytest.skip(f"PostgreSQL does not answer at {POSTGRES_ADMIN_URL}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database that several processes can open."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'contended.sqlite3'}"
        return
    admin_url = postgres_or_skip()
    name = f"executions_contended_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_python(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_publishers_get_dense_unique_numbers(database_url: str, tmp_path: Path) -> None:
    env = {**site_env(tmp_path / "unused.sqlite3"), "DATABASE_URL": database_url}
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    script = ("-c", "import django; django.setup();" + PUBLISH_SCRIPT)

    publishers = [
        run_python({**env, "PYTHONPATH": str(ROOT)}, *script, f"p{index}", str(EVENTS_EACH))
        for index in range(PUBLISHERS)
    ]
    for publisher in publishers:
        _, stderr = publisher.communicate(timeout=180)
        assert publisher.returncode == 0, stderr

    rows = read_events(database_url, tmp_path)
    numbers = [seq for seq, _ in rows]
    assert numbers == list(range(1, PUBLISHERS * EVENTS_EACH + 1))
    switches = sum(1 for (_, a), (_, b) in itertools.pairwise(rows) if a[:2] != b[:2])
    assert switches >= PUBLISHERS, "the publishers ran one after another, not at once"
    for index in range(PUBLISHERS):
        mine = [int(node.split("-")[1]) for _, node in rows if node.startswith(f"p{index}-")]
        assert mine == list(range(EVENTS_EACH)), "each publisher's events keep its order"


def read_events(database_url: str, tmp_path: Path) -> list[tuple[int, str]]:
    """(seq, node_exec_id) of every stored event, read back by a separate process."""
    env = {**site_env(tmp_path / "unused.sqlite3"), "DATABASE_URL": database_url}
    reader = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, json; django.setup();"
            "from executions.models import ExecutionEvent;"
            "rows = ExecutionEvent.objects.filter(graph_id='contended').order_by('seq');"
            "nodes = [json.loads(r.frame)['data']['node_exec_id'] for r in rows];"
            "print(json.dumps([[r.seq, node] for r, node in zip(rows, nodes)]))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reader.returncode == 0, reader.stderr
    return [(seq, node) for seq, node in json.loads(reader.stdout)]
