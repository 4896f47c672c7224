"""A new user's site, built exactly as the README's "Adding the app to your project" says.

The package is built (wheel and sdist) from the committed tree (``git archive HEAD``), the wheel is
installed without extras in a fresh virtualenv, and ``django-admin startproject`` makes the
site. Then the README section is followed in order: its shell commands are run (``pip install
django-executions`` is the built wheel), its Python blocks marked ``# mysite/FILE (append)`` or
``# mysite/FILE (the whole file)`` are written into the site, and daphne serves it. The
WebSocket session, the curl request and the event shown are read from the section too, so the
README and this test cannot drift apart: a step the test does not know how to follow fails it.

Why the committed tree: it is what a release ships, whole and consistent. Untracked files (build
leftovers, a local ``*.egg-info``, scratch files) cannot leak into the package, and neither can
half of an edit in progress; a module that was never ``git add``-ed is missing here as it would
be from a release. Commit first to test a change to the app or to the README with this file.
"""

import asyncio
import contextlib
import html.parser
import http.cookiejar
import io
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import executions
from executions.schemas import ExecutionResult, execution_event_frame
from tests.servers import REPO_ROOT, DaphneServer
from tests.support import close_frame

# The first run downloads setuptools and the dependencies into pip's cache; later runs are fast.
pytestmark = pytest.mark.timeout(900)

TREE = "HEAD"  # what is built and followed: the committed tree
SECTION_HEADING = "## Adding the app to your project"
DISTRIBUTION = "django-executions"
MESSAGE_LIMIT = 65_536  # EXECUTIONS_MAX_MESSAGE_BYTES' default: the site sets no limit of its own
# Where the README's commands say the server listens; the test's daphne is on a free port.
README_ADDRESS = "127.0.0.1:8000"

BUILD_TIMEOUT = 300.0
INSTALL_TIMEOUT = 600.0
COMMAND_TIMEOUT = 60.0
HTTP_TIMEOUT = 10.0
TIMEOUT = 5.0  # any WebSocket frame, and daphne's exit after SIGTERM

# The host site is configured by its own files; none of the test process's settings leak in.
_LEAKING_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "REDIS_URL")
_LEAKING_PREFIXES = ("DJANGO_", "EXECUTIONS_", "DATABASE_")


# --- the README section ---------------------------------------------------------------------

_FENCE = re.compile(r"^```(?P<language>\w*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
_NEXT_HEADING = re.compile(r"^#{2,3} ", re.MULTILINE)
_FILE_MARKER = re.compile(r"^# (?P<path>\S+) \((?P<how>append|the whole file)\)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of the section."""

    language: str
    text: str

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    @property
    def target(self) -> tuple[str, str] | None:
        """(path, "append" or "the whole file") for a block that is a site file's content."""
        match = _FILE_MARKER.match(self.lines[0]) if self.lines else None
        return (match["path"], match["how"]) if match else None

    def commands(self) -> list[list[str]]:
        """A shell block's commands as argument lists, with its continuations and comments.

        Lines that start with ``> `` (typed into an interactive session), ``< `` (what comes
        back) or ``{`` (a command's output) are not commands. A quotation may span lines.
        """
        commands, pending = [], ""
        for line in self.text.replace("\\\n", " ").splitlines():
            if not pending and line.startswith(("> ", "< ", "{")):
                continue
            pending = f"{pending}\n{line}" if pending else line
            try:
                argv = shlex.split(pending, comments=True)
            except ValueError:  # No closing quotation: it closes on a later line.
                continue
            pending = ""
            if argv:
                commands.append(argv)
        assert not pending, f"an unclosed quotation in the README: {pending}"
        return commands

    def session(self, prefix: str) -> list[str]:
        """The lines of an interactive session that start with `prefix`, without it."""
        return [line.removeprefix(prefix) for line in self.lines if line.startswith(prefix)]


@dataclass(frozen=True)
class Readme:
    section: str
    blocks: list[Block]

    @classmethod
    def read(cls, path: Path) -> "Readme":
        text = path.read_text(encoding="utf-8")
        start = text.index(SECTION_HEADING)
        end = _NEXT_HEADING.search(text, start + len(SECTION_HEADING))
        section = text[start : end.start() if end else len(text)]
        blocks = [Block(m["language"], m["body"]) for m in _FENCE.finditer(section)]
        assert blocks, f"no code blocks under {SECTION_HEADING!r}"
        return cls(section, blocks)

    def command(self, *start: str) -> list[str]:
        """The one command of the section that starts with these words."""
        found = [
            argv
            for block in self.blocks
            if block.language == "sh"
            for argv in block.commands()
            if argv[: len(start)] == list(start)
        ]
        assert len(found) == 1, f"expected one command {' '.join(start)!r} in the README: {found}"
        return found[0]

    def block_with(self, language: str, text: str) -> Block:
        found = [b for b in self.blocks if b.language == language and text in b.text]
        assert len(found) == 1, f"expected one {language} block with {text!r} in the README"
        return found[0]

    def inline_command(self, *start: str) -> list[str]:
        """A command the prose gives in backquotes, e.g. `python manage.py changepassword alice`."""
        pattern = re.escape(" ".join(start)) + r"[^`]*"
        found = re.findall(f"`({pattern})`", self.section)
        assert len(found) == 1, f"expected one `{' '.join(start)} ...` in the README's prose"
        return shlex.split(found[0])


# --- processes --------------------------------------------------------------------------------


def run(
    argv: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within `timeout`; fail showing its output if it fails."""
    completed = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        # No controlling terminal: a password prompt reads stdin (getpass's fallback).
        start_new_session=True,
    )
    assert completed.returncode == 0, (
        f"{shlex.join(argv)} exited with {completed.returncode} in {cwd}\n"
        f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    return completed


@dataclass(frozen=True)
class Dists:
    wheel: Path
    sdist: Path
    source: Path  # the committed tree they were built from

    @property
    def version(self) -> str:
        with zipfile.ZipFile(self.wheel) as wheel:
            metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            version = HeaderParser().parsestr(wheel.read(metadata).decode())["Version"]
        assert version, "the wheel's METADATA has no Version"
        return str(version)


@dataclass
class HostSite:
    """The startproject site, as the README's steps left it."""

    directory: Path
    bin: Path  # the fresh virtualenv's bin/
    env: dict[str, str] = field(repr=False)
    ingest_token: str = field(repr=False)
    outputs: dict[str, str] = field(default_factory=dict, repr=False)  # manage.py command: stdout
    daphne_argv: list[str] = field(default_factory=list)  # the README's daphne command

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def manage(self, *args: str, stdin: str | None = None) -> str:
        completed = run(
            [str(self.python), "manage.py", *args], self.directory, self.env, stdin=stdin
        )
        return completed.stdout

    @property
    def token(self) -> str:
        """The WebSocket token the README's ``ws_token`` command printed."""
        token = self.outputs["ws_token"].strip()
        assert token, "ws_token printed nothing"
        assert len(token.split()) == 1, f"ws_token printed more than a token: {token!r}"
        return token


class HostDaphne(DaphneServer):
    """The fresh virtualenv's ``python -m daphne``, started as the README starts it."""

    def __init__(self, site: HostSite, log_dir: Path, name: str) -> None:
        super().__init__(site.env, log_dir, name)
        self.site = site
        self.cwd = site.directory

    def command(self) -> list[str]:
        program, *arguments = self.site.daphne_argv
        assert program == "daphne"
        return [
            str(self.site.python),
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            *arguments,
        ]

    def url(self, readme_url: str) -> str:
        """A URL of the README, pointed at this server."""
        assert README_ADDRESS in readme_url, readme_url
        return readme_url.replace(README_ADDRESS, f"127.0.0.1:{self.port}")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The wheel and the sdist, built with ``python -m build`` from the committed tree."""
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", TREE],
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert archive.returncode == 0, archive.stderr.decode(errors="replace")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tree:
        tree.extractall(source, filter="data")
    out = work / "dist"
    run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        work,
        None,
        BUILD_TIMEOUT,
    )
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == len(sdists) == 1, sorted(out.iterdir())
    return Dists(wheel=wheels[0], sdist=sdists[0], source=source)


@pytest.fixture(scope="module")
def readme(dists: Dists) -> Readme:
    """The README the package was built with."""
    return Readme.read(dists.source / "README.md")


@pytest.fixture(scope="module")
def host_bin(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv of the interpreter that runs the tests, with the wheel, no extras."""
    venv = tmp_path_factory.mktemp("host-venv") / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([base_python, "-m", "venv", str(venv)], venv.parent)
    bin_dir = venv / "bin"
    install = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-input"]
    run([*install, str(dists.wheel)], venv.parent, host_env(bin_dir), INSTALL_TIMEOUT)
    return bin_dir


def host_env(bin_dir: Path, ingest_token: str = "") -> dict[str, str]:
    """The environment of a shell with the fresh virtualenv activated, nothing of the tests'."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _LEAKING_VARIABLES and not name.startswith(_LEAKING_PREFIXES)
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(bin_dir.parent),
        PYTHONUNBUFFERED="1",
    )
    if ingest_token:
        env["EXECUTIONS_INGEST_TOKEN"] = ingest_token
    return env


@pytest.fixture(scope="module")
def host_site(readme: Readme, host_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> HostSite:
    """Follow the README section's blocks in order, up to the command that starts daphne."""
    ingest_token = secrets.token_urlsafe(32)  # what the README's export line makes
    env = host_env(host_bin, ingest_token)
    cwd = tmp_path_factory.mktemp("host-site")
    site: HostSite | None = None
    for block in readme.blocks:
        target = block.target
        if target is not None:
            assert site is not None, f"{target[0]} comes before startproject in the README"
            path, how = target
            assert path.startswith(f"{site.directory.name}/"), path
            file = site.directory / path
            assert file.is_file(), f"startproject made no {path}"
            if how == "append":
                file.write_text(file.read_text() + "\n\n" + block.text)
            else:
                file.write_text(block.text)
            continue
        if block.language != "sh":
            continue
        for argv in block.commands():
            if argv[:2] == ["pip", "install"]:
                # The package itself: here, the wheel host_bin installed.
                assert argv[2:] == [DISTRIBUTION], argv
            elif argv[:2] == ["django-admin", "startproject"]:
                run([str(host_bin / "django-admin"), *argv[1:]], cwd, env)
            elif argv[0] == "cd":
                cwd = cwd / argv[1]
                site = HostSite(cwd, host_bin, env, ingest_token)
            elif argv[:2] == ["python", "manage.py"]:
                assert site is not None, "manage.py before startproject in the README"
                site.outputs[argv[2]] = site.manage(*argv[2:])
            elif argv[0] == "export":
                name = argv[1].partition("=")[0]
                assert name == "EXECUTIONS_INGEST_TOKEN", argv
                assert "token_urlsafe" in " ".join(argv), argv
            elif argv[0] == "daphne":
                assert site is not None, "daphne before startproject in the README"
                site.daphne_argv = argv
                return site
            else:
                pytest.fail(f"the README has a step this test does not follow: {shlex.join(argv)}")
    pytest.fail("the README's section never starts daphne")


@pytest.fixture(scope="module")
def server(host_site: HostSite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostDaphne]:
    with HostDaphne(host_site, tmp_path_factory.mktemp("host-daphne"), "host-daphne") as running:
        yield running


# --- HTTP, as a browser does it -----------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: Any
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the redirect is the answer to look at


class Browser:
    """Requests with a cookie jar, redirects not followed, every one bounded in time."""

    def __init__(self, server: HostDaphne) -> None:
        self.base = server.http_url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirects()
        )

    def request(
        self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=HTTP_TIMEOUT) as answer:
                return Response(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, error.headers, error.read())

    def post_form(self, path: str, fields: dict[str, str]) -> Response:
        body = urllib.parse.urlencode(fields).encode()
        return self.request(path, body, {"Content-Type": "application/x-www-form-urlencoded"})


class Page(html.parser.HTMLParser):
    """The tags of an HTML page that the tests look at, with their attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def find(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        return [
            attrs
            for name, attrs in self.tags
            if name == tag and all(attrs.get(k.replace("_", "-")) == v for k, v in wanted.items())
        ]

    def one(self, tag: str, **wanted: str) -> dict[str, str]:
        found = self.find(tag, **wanted)
        assert len(found) == 1, f"expected one <{tag} {wanted}>, found {found}"
        return found[0]


# --- WebSockets -------------------------------------------------------------------------------


async def receive(client: ClientConnection) -> str:
    async with asyncio.timeout(TIMEOUT):
        frame = await client.recv()
    assert isinstance(frame, str), frame
    return frame


@contextlib.asynccontextmanager
async def subscribed(
    server: HostDaphne, site: HostSite, readme: Readme
) -> AsyncIterator[ClientConnection]:
    """The README's ``python -m websockets`` session: connect with the token, subscribe."""
    session = readme.block_with("sh", "python -m websockets")
    _, _, _, url = readme.command("python", "-m", "websockets")
    assert "token=TOKEN" in url, url
    sent, answers = session.session("> "), session.session("< ")
    assert len(sent) == len(answers) == 1, session.text
    async with connect(server.url(url).replace("token=TOKEN", f"token={site.token}")) as client:
        await client.send(sent[0])
        assert await receive(client) == answers[0]
        yield client


# --- the package --------------------------------------------------------------------------------


def test_the_wheel_holds_the_app_its_files_and_nothing_else(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
    app = dists.source / "executions"
    needed = {
        "executions/templates/executions/index.html",
        "executions/templates/executions/login.html",
        "executions/static/executions/dashboard.js",
        "executions/static/executions/dashboard.css",
        "executions/py.typed",
    }
    for folder in ("migrations", "management/commands"):
        modules = sorted((app / folder).glob("*.py"))
        assert len(modules) > 1, f"no {folder} in the source tree"
        needed |= {module.relative_to(dists.source).as_posix() for module in modules}
    assert needed <= names, sorted(needed - names)
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"executions", f"django_executions-{dists.version}.dist-info"}, top_level


def test_the_sdist_holds_the_templates_and_static_files(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as sdist:
        names = set(sdist.getnames())
    root = f"django_executions-{dists.version}"
    needed = {
        f"{root}/{path}"
        for path in (
            "pyproject.toml",
            "README.md",
            "executions/templates/executions/index.html",
            "executions/templates/executions/login.html",
            "executions/static/executions/dashboard.js",
            "executions/static/executions/dashboard.css",
        )
    }
    assert needed <= names, sorted(needed - names)


def test_without_extras_the_client_names_its_extra(dists: Dists, host_bin: Path) -> None:
    probe = """
import json, executions
try:
    import executions.client
except ImportError as error:
    client = str(error)
else:
    client = None
version, file = executions.__version__, executions.__file__
print(json.dumps({"version": version, "file": file, "client": client}))
"""
    # Run outside the repository, whose executions/ would be imported first from the cwd.
    outcome = json.loads(
        run([str(host_bin / "python"), "-c", probe], host_bin, host_env(host_bin)).stdout
    )

    assert Path(outcome["file"]).is_relative_to(host_bin.parent), outcome["file"]
    assert outcome["version"] == dists.version == executions.__version__
    assert outcome["client"] is not None, "executions.client imported without the client extra"
    assert f"{DISTRIBUTION}[client]" in outcome["client"], outcome["client"]


def test_the_public_names_of_the_python_example_import_in_the_site(
    readme: Readme, host_site: HostSite
) -> None:
    example = readme.block_with("python", "send_execution_result_sync")
    imports = [line for line in example.lines if line.startswith(("from ", "import "))]
    assert imports, example.text
    code = "\n".join([*imports, "print(send_execution_result_sync.__module__)"])
    assert host_site.manage("shell", "-v", "0", "-c", code).strip() == "executions.events"


# --- the site under daphne ------------------------------------------------------------------


def test_the_dashboard_its_assets_and_its_login_are_served(
    readme: Readme, host_site: HostSite, server: HostDaphne, dists: Dists
) -> None:
    browser = Browser(server)
    anonymous = browser.request("/live/")
    assert anonymous.status == 200, anonymous.text
    assert Page(anonymous.text).find("a", href="/live/login/?next=/live/")

    login = browser.request("/live/login/")
    assert login.status == 200, login.text
    form = Page(login.text)
    assert form.find("a", href="/live/")  # the page's title leads to the dashboard
    assert form.one("input", name="next")["value"] == "/live/"

    # The README's way to give alice a password; it prompts twice, here on stdin.
    manage, program, command, username = readme.inline_command(
        "python", "manage.py", "changepassword"
    )
    assert (manage, program, command) == ("python", "manage.py", "changepassword")
    password = secrets.token_urlsafe(16)
    host_site.manage(command, username, stdin=f"{password}\n{password}\n")
    logged_in = browser.post_form(
        "/live/login/",
        {
            "csrfmiddlewaretoken": form.one("input", name="csrfmiddlewaretoken")["value"],
            "username": username,
            "password": password,
            "next": form.one("input", name="next")["value"],
        },
    )
    assert (logged_in.status, logged_in.headers["Location"]) == (302, "/live/"), logged_in.text
    # The new password revoked alice's token: the README has her mint a fresh one.
    manage, program, command, *arguments = readme.inline_command("python", "manage.py", "ws_token")
    assert arguments == [username], arguments
    host_site.outputs[command] = host_site.manage(command, *arguments)
    again = browser.request("/live/login/")  # already logged in: back to the dashboard
    assert (again.status, again.headers["Location"]) == (302, "/live/")

    dashboard = browser.request("/live/")
    assert dashboard.status == 200, dashboard.text
    assert dashboard.headers.get_content_type() == "text/html"
    page = Page(dashboard.text)
    assert page.one("div", id="dashboard")["data-ws-path"] == "/live/ws"
    graph = readme.command("python", "manage.py", "register_graph")[3]
    assert page.find("a", data_graph_id=graph), f"graph {graph!r} is not listed"

    assets = {
        page.one("script")["src"]: ("text/javascript", "dashboard.js"),
        page.one("link", rel="stylesheet")["href"]: ("text/css", "dashboard.css"),
    }
    for url, (content_type, name) in assets.items():
        asset = browser.request(url)
        assert asset.status == 200, (url, asset.status)
        assert asset.headers.get_content_type() == content_type, (url, asset.headers)
        assert asset.body == (dists.source / "executions/static/executions" / name).read_bytes()


async def test_a_result_published_with_curl_reaches_the_subscriber_byte_for_byte(
    readme: Readme, host_site: HostSite, server: HostDaphne
) -> None:
    curl = readme.command("curl")
    options = iter(curl[1:])
    method, url, headers, body = "GET", "", {}, b""
    for option in options:
        if option == "-X":
            method = next(options)
        elif option == "-H":
            name, _, value = next(options).partition(": ")
            headers[name] = value.replace("$EXECUTIONS_INGEST_TOKEN", host_site.ingest_token)
        elif option == "--data":
            body = next(options).encode()
        else:
            assert not option.startswith("-"), f"a curl option this test does not know: {option}"
            assert not url, f"two URLs in the README's curl command: {url}, {option}"
            url = option
    curl_block = readme.block_with("sh", "curl ")
    answer_shown = [line for line in curl_block.lines if line.startswith("{")]
    event_shown = readme.block_with("text", '"execution_event"').session("< ")
    assert len(answer_shown) == len(event_shown) == 1, (answer_shown, event_shown)
    result = ExecutionResult.model_validate_json(body)

    async with subscribed(server, host_site, readme) as client:
        request = urllib.request.Request(server.url(url), body, headers, method=method)
        with await asyncio.to_thread(
            urllib.request.urlopen, request, timeout=HTTP_TIMEOUT
        ) as answer:
            assert (answer.status, answer.read().decode()) == (202, answer_shown[0])
        frame = await receive(client)

    assert frame == execution_event_frame(result)
    start, _, end = event_shown[0].partition("...")
    assert frame.startswith(start), (event_shown[0], frame)
    assert frame.endswith(end), (event_shown[0], frame)


async def test_a_message_over_64_kib_is_closed_with_1009(
    readme: Readme, host_site: HostSite, server: HostDaphne
) -> None:
    async with subscribed(server, host_site, readme) as client:
        envelope = '{"method":"heartbeat","data":""}'
        await client.send(envelope[:-2] + "x" * (MESSAGE_LIMIT + 1 - len(envelope)) + '"}')
        received = await close_frame(client)
    assert received.code == 1009


async def test_sigterm_closes_subscribers_with_1012_and_daphne_exits(
    readme: Readme, host_site: HostSite, tmp_path: Path
) -> None:
    with HostDaphne(host_site, tmp_path, "host-daphne-sigterm") as server:
        assert server.process is not None
        async with subscribed(server, host_site, readme) as client:
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            received = await close_frame(client)
        try:
            await asyncio.to_thread(server.process.wait, TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daphne did not exit within {TIMEOUT} s of SIGTERM:\n{server.output()}")
    assert received.code == 1012, received
    assert time.monotonic() - signalled < TIMEOUT
