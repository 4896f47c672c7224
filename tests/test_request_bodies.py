"""Request bodies are bounded under every server: over its limit, a body is refused with 413
before it is read (``Content-Length``) or at the chunk that crosses the limit (chunked).

In process: the real ASGI application (RequestBodyLimit in front of the ingest path and
Django). Then real daphne and uvicorn subprocesses, sent 60 MB bodies over a raw socket the way
curl sends them (reading the answer while it sends), with the server's TMPDIR pointed at a test
directory that is watched, along with every file the server holds open there, while it reads.
"""

import asyncio
import contextlib
import json
import os
import select
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.conf import settings as django_settings

from executions import conf, history
from tests.conftest import make_result, subscribe
from tests.servers import (
    INGEST_TOKEN,
    DaphneServer,
    Site,
    UvicornServer,
    prepare_site,
    request_json,
)
from tests.support import http_scope

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ingest-token-for-the-body-limit-tests-0123456789"
SIXTY_MB = 60_000_000
SOCKET_BUFFERS = 15_000_000  # more than a loopback connection's send and receive buffers hold
TIMEOUT = 5.0


# --- in process: the ASGI application ----------------------------------------------------


async def answer_of(communicator: ApplicationCommunicator) -> tuple[int, dict[str, str], bytes]:
    start = await communicator.receive_output(timeout=TIMEOUT)
    assert start["type"] == "http.response.start", start
    body = await communicator.receive_output(timeout=TIMEOUT)
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body["body"]


@pytest.fixture
def limits(settings: Any) -> dict[str, int]:
    """Small limits, so that the in-process tests send kilobytes instead of megabytes."""
    settings.EXECUTIONS_INGEST_TOKEN = TOKEN
    settings.EXECUTIONS_MAX_INGEST_BYTES = 1_000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    settings.EXECUTIONS_MAX_UPLOAD_BYTES = 5_000
    return {"ingest": 1_000, "data": 2_000, "upload": 5_000}


# Each kind of body, the request that carries it, and the setting that bounds it.
KINDS = {
    "ingest": ("/api/executions", {"Authorization": f"Bearer {TOKEN}"}, "application/json"),
    "data": ("/login/", {}, "application/x-www-form-urlencoded"),
    "upload": ("/login/", {}, "multipart/form-data; boundary=xyz"),
}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(
    application: Any, limits: dict[str, int], kind: str
) -> None:
    path, headers, content_type = KINDS[kind]
    limit = limits[kind]
    scope = http_scope(
        path, {**headers, "Content-Type": content_type, "Content-Length": str(limit + 1)}
    )
    communicator = ApplicationCommunicator(application, scope)

    # No body is ever sent: an application that tried to read it would wait forever.
    status, answer_headers, body = await answer_of(communicator)

    assert status == 413
    assert json.loads(body) == {
        "error": f"Request body too large: the limit here is {limit} bytes."
    }
    assert answer_headers["connection"] == "close"
    await communicator.wait(timeout=TIMEOUT)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_chunked_body_is_cut_off_at_the_chunk_that_crosses_the_limit(
    application: Any, limits: dict[str, int], kind: str
) -> None:
    path, headers, content_type = KINDS[kind]
    limit = limits[kind]
    communicator = ApplicationCommunicator(
        application, http_scope(path, {**headers, "Content-Type": content_type})
    )
    chunk = b"x" * (limit // 4 + 1)
    for _ in range(4):  # 4 chunks pass the limit
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": True})
    for _ in range(3):  # ...and these are never read
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": True})

    status, _, body = await answer_of(communicator)

    assert status == 413
    assert str(limit) in json.loads(body)["error"]
    await communicator.wait(timeout=TIMEOUT)
    assert communicator.input_queue.qsize() == 3


async def test_a_body_at_the_limit_is_served(application: Any, limits: dict[str, int]) -> None:
    body = b"a=" + b"x" * (limits["data"] - 2)
    scope = http_scope(
        "/login/",
        {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body))},
    )
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": body})

    status, _, _ = await answer_of(communicator)

    assert status == 403  # Django's CSRF check: the body reached Django
    await communicator.wait(timeout=TIMEOUT)


async def test_file_uploads_get_their_own_larger_limit(
    application: Any, limits: dict[str, int]
) -> None:
    # Django counts no file data against DATA_UPLOAD_MAX_MEMORY_SIZE: a project that accepts
    # uploads keeps them, up to EXECUTIONS_MAX_UPLOAD_BYTES.
    file_data = b"y" * (limits["data"] * 2)
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="f"; filename="f.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + file_data + b"\r\n--xyz--\r\n"
    )
    assert limits["data"] < len(body) <= limits["upload"]
    scope = http_scope(
        "/login/",
        {"Content-Type": "multipart/form-data; boundary=xyz", "Content-Length": str(len(body))},
    )
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": body})

    status, _, _ = await answer_of(communicator)

    assert status == 403  # CSRF again: Django parsed the upload
    await communicator.wait(timeout=TIMEOUT)


async def test_none_turns_a_limit_off(
    application: Any, limits: dict[str, int], settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = None
    body = b"a=" + b"x" * (limits["data"] * 3)
    scope = http_scope(
        "/login/",
        {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body))},
    )
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": body})

    status, _, _ = await answer_of(communicator)

    assert status == 403
    await communicator.wait(timeout=TIMEOUT)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}"])
async def test_ingest_refuses_a_bad_token_before_it_reads_the_body(
    application: Any, limits: dict[str, int], authorization: str | None
) -> None:
    # Even past the limit: the token is checked before the size of the body.
    headers = {"Content-Type": "application/json", "Content-Length": str(limits["ingest"] + 1)}
    if authorization is not None:
        headers["Authorization"] = authorization
    communicator = ApplicationCommunicator(application, http_scope("/api/executions", headers))

    # The body never comes: the answer cannot wait for it.
    status, answer_headers, body = await answer_of(communicator)

    assert status == 401
    assert json.loads(body) == {"error": "Missing or invalid credentials."}
    assert answer_headers["connection"] == "close"
    await communicator.wait(timeout=TIMEOUT)


async def test_ingest_gives_up_on_a_client_that_disconnects_mid_upload(
    application: Any, limits: dict[str, int], connect: Any, alice_token: str
) -> None:
    subscriber = await connect(token=alice_token)
    await subscribe(subscriber, "test_graph")
    whole = make_result().model_dump_json().encode()
    scope = http_scope(
        "/api/executions",
        {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "Content-Length": str(len(whole)),
        },
    )
    communicator = ApplicationCommunicator(application, scope)
    half = len(whole) // 2
    await communicator.send_input({"type": "http.request", "body": whole[:half], "more_body": True})
    await communicator.send_input({"type": "http.disconnect"})

    await communicator.wait(timeout=TIMEOUT)  # the application is done, and sent nothing

    assert communicator.output_queue.empty()
    assert await subscriber.receive_nothing(timeout=0.3)
    position = await asyncio.to_thread(history.position, "test_graph")
    assert position.head == 0


def test_the_defaults() -> None:
    assert conf.DEFAULTS["EXECUTIONS_MAX_INGEST_BYTES"] == 1024 * 1024
    assert conf.DEFAULTS["EXECUTIONS_MAX_UPLOAD_BYTES"] == 10 * 1024 * 1024
    assert django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE == 2_621_440  # Django's own


# --- real servers: 60 MB bodies ----------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes
    seconds: float  # from the first body byte sent to the whole answer received
    body_bytes_sent: int


def upload(
    port: int, path: str, size: int, *, chunked: bool, headers: dict[str, str] | None = None
) -> Answer:
    """POST `size` bytes over a raw socket, reading the answer while sending, as curl does.

    Stops sending once the answer has come (or the server closed the connection); every wait
    is bounded.
    """
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
    piece = b"x" * 65536
    received = b""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        started = time.monotonic()
        deadline = started + 2 * TIMEOUT
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < size else [], [], 1.0)
            if readable:
                break
            if writable:
                n = min(len(piece), size - sent)
                data = b"%x\r\n%s\r\n" % (n, piece[:n]) if chunked else piece[:n]
                try:
                    sock.sendall(data)
                except OSError:  # the server closed the connection: read what it answered
                    break
                sent += n
                if sent == size and chunked:
                    sock.sendall(b"0\r\n\r\n")
        with contextlib.suppress(OSError):  # a reset after the answer is the server's close
            while b"\r\n\r\n" not in received or not _complete(received):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        seconds = time.monotonic() - started
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 "), f"no answer: {received[:200]!r}"
    return Answer(int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2], seconds, sent)


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


@dataclass
class TempFileWatch:
    """The largest file seen in a directory, or held open there by a process, while it runs."""

    directory: Path
    pid: int
    largest: int = 0
    seen: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sizes(self) -> Iterator[tuple[str, int]]:
        for entry in self.directory.iterdir():
            with contextlib.suppress(OSError):
                yield str(entry), entry.stat().st_size
        # Files already unlinked (tempfile.TemporaryFile) are seen only through the process.
        fd_dir = Path(f"/proc/{self.pid}/fd")
        for fd in list(fd_dir.iterdir()) if fd_dir.exists() else []:
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith(str(self.directory)):
                    yield target, os.stat(fd).st_size

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, size in self._sizes():
                if size > self.largest:
                    self.largest = size
                if name not in self.seen:
                    self.seen.append(name)
            time.sleep(0.001)

    @contextlib.contextmanager
    def watching(self) -> Iterator["TempFileWatch"]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            time.sleep(0.05)  # a last look after the answer
            self._stop.set()
            thread.join(timeout=TIMEOUT)


GRAPH = f"bodies-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    prepared = prepare_site(tmp_path_factory.mktemp("bodies-site"))
    prepared.token_for("alice")
    prepared.register_graph(GRAPH, "alice")
    return prepared


@dataclass
class Served:
    server: DaphneServer
    tmpdir: Path

    def watch(self) -> TempFileWatch:
        assert self.server.process is not None
        return TempFileWatch(self.tmpdir, self.server.process.pid)

    def assert_still_serving(self) -> None:
        self.server.assert_running()
        status, _ = request_json(f"{self.server.http_url}/healthz", timeout=TIMEOUT)
        assert status == 200
        result = json.loads(make_result(graph_id=GRAPH).model_dump_json())
        url = f"{self.server.http_url}/api/executions"
        assert request_json(url, [result], INGEST_TOKEN, TIMEOUT) == (202, {"accepted": 1})


@pytest.fixture(scope="module", params=["daphne", "uvicorn", "daphne-without-adapters"])
def served(
    request: pytest.FixtureRequest, site: Site, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmpdir = tmp_path_factory.mktemp(f"{request.param}-tmp")
    kind = UvicornServer if request.param == "uvicorn" else DaphneServer
    env = {**site.env, "TMPDIR": str(tmpdir)}
    if request.param == "daphne-without-adapters":
        # A body limit is a safety matter: daphne keeps it with its adapter off.
        env["DJANGO_SETTINGS_MODULE"] = "tests.plain_asgi_settings"
    log_dir = tmp_path_factory.mktemp(f"{request.param}-logs")
    with kind(env, log_dir, name=request.param) as server:
        yield Served(server, tmpdir)


INGEST_LIMIT = 1024 * 1024
DATA_LIMIT = 2_621_440
UPLOAD_LIMIT = 10 * 1024 * 1024
ROUTES = {
    "ingest": (
        "/api/executions",
        {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"},
        INGEST_LIMIT,
    ),
    "any path": ("/no/such/page", {"Content-Type": "application/json"}, DATA_LIMIT),
    "upload": ("/login/", {"Content-Type": "multipart/form-data; boundary=b"}, UPLOAD_LIMIT),
}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("route", ROUTES)
def test_sixty_megabytes_are_refused_within_a_second_and_never_stored(
    served: Served, route: str, chunked: bool
) -> None:
    path, headers, limit = ROUTES[route]

    with served.watch().watching() as watch:
        answer = upload(served.server.port, path, SIXTY_MB, chunked=chunked, headers=headers)

    print(  # shown with -s: the measured times
        f"{served.server.name} {route} {'chunked' if chunked else 'content-length'}: "
        f"{answer.status} in {answer.seconds:.3f} s, {answer.body_bytes_sent} bytes sent, "
        f"largest temporary file {watch.largest} bytes"
    )
    assert answer.status == 413, answer
    assert json.loads(answer.body) == {
        "error": f"Request body too large: the limit here is {limit} bytes."
    }
    assert answer.seconds < 1.0
    assert watch.largest <= limit, watch.seen
    # The server stopped reading: past the limit, the client filled the sockets' buffers (a
    # few MB on loopback) and no more.
    assert answer.body_bytes_sent < limit + SOCKET_BUFFERS
    served.assert_still_serving()


def test_a_bad_token_is_answered_before_sixty_megabytes_are_sent(served: Served) -> None:
    headers = {"Authorization": "Bearer wrong", "Content-Type": "application/json"}

    answer = upload(served.server.port, "/api/executions", SIXTY_MB, chunked=True, headers=headers)

    # uvicorn hands the request over at once, and the app checks the token before reading; daphne
    # reads the body first, and its hook cuts it off at the limit.
    assert answer.status == (401 if served.server.name == "uvicorn" else 413)
    assert answer.seconds < 1.0
    assert answer.body_bytes_sent < INGEST_LIMIT + SOCKET_BUFFERS
    served.assert_still_serving()


def test_an_upload_within_its_limit_reaches_the_application(served: Served) -> None:
    # 5 MB: past DATA_UPLOAD_MAX_MEMORY_SIZE, within EXECUTIONS_MAX_UPLOAD_BYTES.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="f"; filename="f.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + b"z" * 5_000_000 + b"\r\n--b--\r\n"
    )
    request = urllib.request.Request(
        f"{served.server.http_url}/login/",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        method="POST",
    )

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=TIMEOUT)

    # Django's CSRF check, which parsed the upload to look for the token: the body was Django's.
    assert refused.value.code == 403
    refused.value.close()
    served.assert_still_serving()
