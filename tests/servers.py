"""Real processes for end-to-end tests: a migrated SQLite site and daphne servers.

Everything here runs the project the way an operator would: ``manage.py`` commands and
``python -m daphne`` as subprocesses, configured only through the environment. Every wait is
bounded, and a failure shows what the subprocess printed.
"""

import asyncio
import atexit
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support import free_port, redis_url_or_skip

REPO_ROOT = Path(__file__).resolve().parent.parent
MANAGE_PY = REPO_ROOT / "manage.py"

SECRET_KEY = "end-to-end-test-secret-key-never-used-outside-the-test-suite-0123456789"
INGEST_TOKEN = "end-to-end-ingest-token-0123456789abcdefghij"
ALLOWED_HOSTS = "localhost,127.0.0.1"

# Settings the servers read from the environment; never inherited from the test process.
_SITE_VARIABLES = (
    "DATABASE_URL",
    "DJANGO_SECRET_KEY",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_DEBUG",
    "DJANGO_SETTINGS_MODULE",
    "DJANGO_SECURE",
    "EXECUTIONS_API_DOCS",
    "EXECUTIONS_DEMO_ENABLED",
    "EXECUTIONS_INGEST_TOKEN",
    "EXECUTIONS_METRICS_NETWORKS",
    "EXECUTIONS_METRICS_TOKEN",
    "EXECUTIONS_REDIS_LAYER",
    "EXECUTIONS_SSE_HEARTBEAT_SECONDS",
    "REDIS_URL",
)

MANAGE_TIMEOUT = 60.0
STARTUP_TIMEOUT = 20.0
SHUTDOWN_TIMEOUT = 5.0


def site_env(
    database: Path, redis_url: str | None = None, redis_layer: str | None = None
) -> dict[str, str]:
    """The environment of every process of a test site: its database, keys and channel layer."""
    env = {key: value for key, value in os.environ.items() if key not in _SITE_VARIABLES}
    env.update(
        DATABASE_URL=f"sqlite:///{database.resolve()}",
        DJANGO_SECRET_KEY=SECRET_KEY,
        DJANGO_ALLOWED_HOSTS=ALLOWED_HOSTS,
        DJANGO_SETTINGS_MODULE="project.settings",
        EXECUTIONS_INGEST_TOKEN=INGEST_TOKEN,
        PYTHONUNBUFFERED="1",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    if redis_layer:
        env["EXECUTIONS_REDIS_LAYER"] = redis_layer
    return env


def run_manage(
    env: Mapping[str, str],
    *args: str,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = MANAGE_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py ARGS`` in the repository; with check, fail showing its output."""
    completed = subprocess.run(
        [sys.executable, str(MANAGE_PY), *args],
        cwd=REPO_ROOT,
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert completed.returncode == 0, (
            f"manage.py {' '.join(args)} exited with {completed.returncode}\n"
            f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
        )
    return completed


@dataclass
class Site:
    """A migrated SQLite database, and the environment that points processes at it."""

    database: Path
    env: dict[str, str] = field(repr=False)

    def with_redis(self, redis_url: str, layer: str) -> dict[str, str]:
        """This site's environment on a Redis channel layer ("pubsub" or "core")."""
        return site_env(self.database, redis_url=redis_url, redis_layer=layer)

    def manage(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run_manage(self.env, *args, **kwargs)

    def token_for(self, username: str, ttl: int | None = None, create_user: bool = True) -> str:
        """A WebSocket token minted by ``manage.py ws_token``, which prints it alone."""
        args = ["ws_token", username]
        if create_user:
            args.append("--create-user")
        if ttl is not None:
            args += ["--ttl", str(ttl)]
        token = self.manage(*args).stdout.strip()
        assert token, "ws_token printed nothing"
        assert len(token.split()) == 1, f"ws_token printed more than a token: {token!r}"
        return token

    def register_graph(self, graph_id: str, owner: str) -> None:
        self.manage("register_graph", graph_id, "--owner", owner)


@functools.cache
def _migrated_template() -> Path:
    """A database migrated once per test run (each ``migrate`` costs about a second)."""
    directory = tempfile.mkdtemp(prefix="e2e-template-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    database = Path(directory) / "template.sqlite3"
    run_manage(site_env(database), "migrate", "--noinput", "-v", "0")
    # migrate's last connection checkpointed the write-ahead log: the file holds it all.
    assert not database.with_name(database.name + "-wal").exists()
    return database


def prepare_site(directory: Path, redis_url: str | None = None) -> Site:
    """A fresh migrated SQLite database in `directory` (a pytest tmp dir): a copy of one."""
    database = directory / "e2e.sqlite3"
    assert not database.exists(), f"{database} already exists"
    shutil.copyfile(_migrated_template(), database)
    return Site(database=database, env=site_env(database, redis_url=redis_url))


def stop_process(process: "subprocess.Popen[bytes] | None", timeout: float) -> None:
    """SIGTERM a running subprocess, then SIGKILL it if it has not exited within `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class DaphneServer:
    """``python -m daphne`` serving ``project.asgi:application`` on a free local port."""

    cwd: Path = REPO_ROOT  # where the server starts, so where its site's modules are found

    def __init__(
        self, env: Mapping[str, str], log_dir: Path, name: str = "daphne", port: int = 0
    ) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.name = name
        self.port = 0
        self.fixed_port = port  # 0: a free port, picked at each start()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_path: Path | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Spawn daphne; wait_ready() then waits until it answers."""
        alive = self.process is not None and self.process.poll() is None
        assert not alive, f"{self.name} is already running"
        self.port = self.fixed_port or free_port()
        self.starts += 1
        self._log_path = self.log_dir / f"{self.name}-{self.port}-{self.starts}.log"
        with self._log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def command(self) -> list[str]:
        """How operators start it: plain daphne, configured only by the environment."""
        return [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "project.asgi:application",
        ]

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Return once the port accepts connections; fail with daphne's output otherwise."""
        assert self.process is not None, f"{self.name} was never started"
        deadline = time.monotonic() + timeout
        port_clashes = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "Address already in use" in self.output() and port_clashes < 3:
                    # Another process took the free port between free_port() and daphne's bind.
                    port_clashes += 1
                    self.process = None
                    self.start()
                    continue
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode} before answering on "
                    f"port {self.port}:\n{self.output()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name} did not answer on port {self.port} within {timeout:.0f} s:\n"
            f"{self.output()}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if daphne has not exited within a bounded wait."""
        stop_process(self.process, SHUTDOWN_TIMEOUT)

    def assert_running(self) -> None:
        assert self.process is not None, f"{self.name} was never started"
        assert self.process.poll() is None, f"{self.name} is not running:\n{self.output()}"

    def output(self) -> str:
        """Everything daphne printed so far (stdout and stderr)."""
        if self._log_path is None or not self._log_path.exists():
            return "<no output>"
        return self._log_path.read_text(errors="replace") or "<no output>"


@contextlib.contextmanager
def running(*servers: DaphneServer) -> Iterator[tuple[DaphneServer, ...]]:
    """Start several servers at once (they boot in parallel), stop them all afterwards."""
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers


ServerPair = tuple["DaphneServer", "DaphneServer"]


@contextlib.contextmanager
def redis_server_pairs(
    site: Site, log_dir: Path, prefix: str = ""
) -> Iterator[Callable[[str], ServerPair]]:
    """Two daphne processes on the site's database per Redis layer, started on first use."""
    pairs: dict[str, ServerPair] = {}
    with contextlib.ExitStack() as stack:

        def pair(layer: str) -> ServerPair:
            if layer not in pairs:
                env = site.with_redis(redis_url_or_skip(), layer)
                servers = (
                    DaphneServer(env, log_dir, f"{prefix}{layer}-a"),
                    DaphneServer(env, log_dir, f"{prefix}{layer}-b"),
                )
                stack.enter_context(running(*servers))
                pairs[layer] = servers
            return pairs[layer]

        yield pair


def request_json(
    url: str, body: Any = None, bearer: str | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """GET `url` (or POST `body` as JSON) and return (status, parsed JSON body), errors too."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if bearer is not None:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null")


async def post_executions(
    server: DaphneServer, body: Any, bearer: str | None = INGEST_TOKEN, seconds: float = 30.0
) -> tuple[int, Any]:
    """POST `body` to the server's /api/executions; return (status, parsed JSON body)."""
    url = f"{server.http_url}/api/executions"
    return await asyncio.to_thread(request_json, url, body, bearer, seconds)


class UvicornServer(DaphneServer):
    """``python -m uvicorn`` (uvloop, httptools) serving the same application."""

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "project.asgi:application",
        ]
