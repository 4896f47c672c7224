"""Hostile input: hypothesis-generated frames sent to the real consumer.

Every frame goes to project.asgi.application through channels' WebsocketCommunicator, on the
real in-memory channel layer, from an authenticated user subscribed to a graph. One connection
serves all the examples of a test (rate limits raised so the token bucket stays out of the way);
a connection the server closes is replaced by a new one.

The invariants, checked after every frame:

- it gets exactly one reply, a well-formed WsMessage: an acknowledgement, a pong, or an error
  frame whose error is one of the documented sentences (never a traceback); or the reply is the
  error frame that explains a close with a documented code (4009, 4029), followed by that close;
- the consumer never crashes: an exception in the application makes ``receive_output`` raise,
  which fails the test;
- afterwards a separate subscriber on the same process still receives a published event.

The number of frames tried is written at the end of the module's run ("fuzz figures: ...").
"""

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from executions.events import send_execution_result
from executions.limits import open_connections
from executions.protocol import CloseCode, ErrorText
from executions.schemas import Methods, WsMessage
from tests.conftest import browser_headers, make_result, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

REPLY_TIMEOUT = 5.0
SUBSCRIBED_GRAPH = "test_graph"  # alice owns it and "graph-2" (tests.conftest.alice)
BYSTANDER_GRAPH = "graph-2"

PING = '{"method":"heartbeat","data":"ping"}'
PONG = '{"method":"heartbeat","data":"pong","success":true,"channel":null,"error":null}'

# Every frame, reply and close seen by this module's tests.
FIGURES: Counter[str] = Counter()


def fuzz_settings(max_examples: int) -> Callable[[Any], Any]:
    return hypothesis_settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,  # one connection serves every example
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# --- what a reply may say -------------------------------------------------------------------


def _template_pattern(template: str) -> re.Pattern[str]:
    """A documented sentence as a regex: its {placeholders} stand for numbers."""
    parts = re.split(r"\{[a-z_]+\}", template)
    return re.compile(r"[0-9]+(?:\.[0-9]+)?".join(re.escape(part) for part in parts))


DOCUMENTED_ERRORS = [
    _template_pattern(text)
    for name, text in vars(ErrorText).items()
    if not name.startswith("_") and isinstance(text, str)
] + [_template_pattern("data must be an object, an array, a string or null.")]

# A close comes after the error frame that says why: its documented sentence, by close code.
DOCUMENTED_CLOSES = {
    CloseCode.MESSAGE_TOO_BIG: _template_pattern(ErrorText.MESSAGE_TOO_BIG),
    CloseCode.RATE_LIMITED: _template_pattern(ErrorText.RATE_LIMIT_ABUSED),
}

REPLY_METHODS = {
    Methods.SUBSCRIBE,
    Methods.SUBSCRIBE_GRAPH_EXEC,
    Methods.SUBSCRIBE_GRAPH_EXECS,
    Methods.UNSUBSCRIBE,
    Methods.HEARTBEAT,
    Methods.ERROR,
}


def check_reply(text: str) -> WsMessage:
    """Assert a reply is a well-formed WsMessage of the kinds a client frame may get."""
    assert "Traceback" not in text, text
    payload = json.loads(text)
    assert isinstance(payload, dict), text
    assert set(payload) == {"method", "data", "success", "channel", "error"}, text
    message = WsMessage.model_validate(payload)
    assert message.method in REPLY_METHODS, text
    if message.method is Methods.ERROR:
        assert message.success is False, text
        assert message.data is None, text
        assert isinstance(message.error, str), text
        assert message.error.strip(), text
        assert "\n" not in message.error, text
        assert any(pattern.fullmatch(message.error) for pattern in DOCUMENTED_ERRORS), (
            f"an undocumented error: {message.error!r}"
        )
        FIGURES[f"reply: error {message.error[:40]}"] += 1
    else:
        assert message.success is True, text
        assert message.error is None, text
        if message.method is Methods.HEARTBEAT:
            assert text == PONG
        else:
            assert isinstance(message.channel, str), text
            assert message.channel, text
        FIGURES[f"reply: {message.method.value}"] += 1
    return message


# --- one connection, reused by every example of a test ------------------------------------


async def receive_output(client: WebsocketCommunicator) -> dict[str, Any]:
    """The application's next output; its exception if it crashed instead.

    The same as ``client.receive_output``, except that a crash is raised as soon as it happens
    rather than after the timeout (which hypothesis' shrinking would otherwise wait out for
    every failing example).
    """
    getter = asyncio.ensure_future(client.output_queue.get())
    try:
        await asyncio.wait(
            {getter, client.future}, timeout=REPLY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        output: dict[str, Any] = getter.result()
        return output
    if client.future.done():
        client.future.result()  # raises what the application raised
        raise AssertionError("the application finished without replying")
    raise AssertionError(f"no reply within {REPLY_TIMEOUT} s")


class Fuzzer:
    """Sends frames over one authenticated connection, checking each reply."""

    def __init__(self, application: Any, token: str) -> None:
        self.application = application
        self.token = token
        self.client: WebsocketCommunicator | None = None

    async def open(self) -> WebsocketCommunicator:
        client = WebsocketCommunicator(
            self.application, f"/ws?token={self.token}", headers=browser_headers()
        )
        connected, _ = await client.connect(timeout=REPLY_TIMEOUT)
        assert connected
        reply = await subscribe(client, SUBSCRIBED_GRAPH)
        assert reply["success"] is True, reply
        FIGURES["connections opened"] += 1
        return client

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if client.future.done():
            return  # it crashed; the test that saw the crash reports it
        await client.disconnect(timeout=REPLY_TIMEOUT)

    async def send(self, frame: str | bytes, strategy: str) -> None:
        """Send one frame; assert it gets exactly one documented reply (or a documented close)."""
        FIGURES["frames"] += 1
        FIGURES[f"frames: {strategy}"] += 1
        if self.client is None:
            self.client = await self.open()
        client = self.client
        key = "text" if isinstance(frame, str) else "bytes"
        try:
            await client.send_input({"type": "websocket.receive", key: frame})
            # A heartbeat right behind it: its pong marks the end of the frame's replies.
            await client.send_input({"type": "websocket.receive", "text": PING})
            reply = await receive_output(client)
            if reply["type"] == "websocket.close":
                await self._closed(reply, None)
                return
            assert reply["type"] == "websocket.send", reply
            assert reply.get("bytes") is None, f"a binary reply: {reply!r}"
            message = check_reply(reply["text"])
            after = await receive_output(client)
            if after["type"] == "websocket.close":
                await self._closed(after, message)
                return
            assert after == {"type": "websocket.send", "text": PONG}, (
                f"a second reply to one frame: {after!r} after {reply!r}"
            )
            assert client.output_queue.empty(), "more replies to one frame"
        except BaseException:
            self.client = None
            if client.future.done() and not client.future.cancelled():
                client.future.exception()  # reported by the assertion that saw it
            raise

    async def _closed(self, close: dict[str, Any], explained_by: WsMessage | None) -> None:
        code = close.get("code")
        assert code in DOCUMENTED_CLOSES, f"closed with an undocumented code: {close!r}"
        assert explained_by is not None, f"closed with {code} without an error frame first"
        assert explained_by.method is Methods.ERROR
        assert DOCUMENTED_CLOSES[code].fullmatch(explained_by.error or ""), (code, explained_by)
        FIGURES[f"closed with {code}"] += 1
        await self.close()


@pytest.fixture(autouse=True)
def raised_rate_limits(settings: Any) -> None:
    settings.EXECUTIONS_MESSAGES_PER_SECOND = 100_000
    settings.EXECUTIONS_MESSAGE_BURST = 100_000


@pytest.fixture
async def bystander(connect: Any, alice_token: str) -> AsyncIterator[Any]:
    """A well-behaved subscriber connected before the fuzzing, checked after it."""
    client = await connect(token=alice_token)
    assert (await subscribe(client, BYSTANDER_GRAPH))["success"] is True
    yield client
    result = make_result(graph_id=BYSTANDER_GRAPH, node_exec_id="after-the-fuzzing")
    await send_execution_result(result)
    event = await client.receive_json_from(timeout=REPLY_TIMEOUT)
    assert event["method"] == "execution_event"
    assert event["data"]["node_exec_id"] == "after-the-fuzzing"


def counted() -> dict[str, float]:
    """What the process counts as open: connection slots, and the gauges of /metrics."""
    return {
        "connection slots": open_connections.total,
        "executions_connections": REGISTRY.get_sample_value("executions_connections") or 0.0,
        "executions_subscriptions": REGISTRY.get_sample_value("executions_subscriptions") or 0.0,
    }


@pytest.fixture
def nothing_stays_counted() -> Iterator[None]:
    """Once every connection of a test is gone, the process counts none of them any more.

    Set up before the connections and torn down after them all: a connection whose consumer
    died without running its disconnect would hold a slot of the per-user and per-process
    limits for the rest of the process's life.
    """
    before = counted()
    yield
    assert counted() == before, "connections or subscriptions stayed counted after closing"


@pytest.fixture
async def fuzzer(
    nothing_stays_counted: None, application: Any, alice_token: str, bystander: Any
) -> AsyncIterator[Fuzzer]:
    fuzzer = Fuzzer(application, alice_token)
    yield fuzzer
    await fuzzer.close()


@pytest.fixture(scope="module", autouse=True)
def fuzz_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    """Write how many frames were tried, and what came back, once the module has run."""
    yield
    lines = [f"fuzz figures: frames={FIGURES['frames']}"]
    lines += [f"  {name}: {count}" for name, count in sorted(FIGURES.items()) if name != "frames"]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


# --- strategies -----------------------------------------------------------------------------

METHOD_NAMES = [method.value for method in Methods]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


@st.composite
def dumped(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> str:
    """A JSON text of a drawn value, ASCII-escaped or not (NaN and Infinity as Python writes)."""
    return json.dumps(draw(values), ensure_ascii=draw(st.booleans()))


message_like = st.fixed_dictionaries(
    {"method": st.sampled_from(METHOD_NAMES) | json_values},
    optional={
        "data": json_values
        | st.fixed_dictionaries(
            {"graph_id": json_values | st.sampled_from([SUBSCRIBED_GRAPH, BYSTANDER_GRAPH])},
            optional={"since": json_values, "snapshot": json_values},
        ),
        "success": json_values,
        "channel": json_values,
        "error": json_values,
    },
)

random_json_frames = dumped(json_values) | dumped(message_like)

JSONISH = '{}[]":,.-+0123456789eE \\/tfnrulasubscribemethoddatagraph_idsincesnapshotheartbeat'
random_text_frames = st.text(max_size=300) | st.text(alphabet=JSONISH, max_size=120)

random_byte_frames = (
    st.binary(max_size=600)
    | dumped(message_like).map(lambda text: text.encode("utf-8"))
    | st.just(PING.encode("utf-8"))
)


@st.composite
def nested_frames(draw: st.DrawFn) -> str:
    """Deep arrays and objects, balanced or not, alone or where a message expects a value."""
    depth = draw(st.integers(min_value=1, max_value=2000) | st.integers(1, 80_000))
    shape = draw(st.sampled_from(["array", "object", "mixed", "open", "closed"]))
    if shape == "array":
        nested = "[" * depth + "]" * depth
    elif shape == "object":
        nested = '{"a":' * depth + "0" + "}" * depth
    elif shape == "mixed":
        nested = '[{"a":' * depth + "null" + "}]" * depth
    elif shape == "open":
        nested = "[" * depth
    else:
        nested = "]" * depth
    where = draw(st.sampled_from(["alone", "data", "graph_id", "since", "method", "extra"]))
    return {
        "alone": nested,
        "data": f'{{"method":"subscribe","data":{nested}}}',
        "graph_id": f'{{"method":"subscribe","data":{{"graph_id":{nested}}}}}',
        "since": f'{{"method":"subscribe","data":{{"graph_id":"test_graph","since":{nested}}}}}',
        "method": f'{{"method":{nested},"data":null}}',
        "extra": f'{{"method":"heartbeat","data":"ping","x":{nested}}}',
    }[where]


@st.composite
def huge_number_frames(draw: st.DrawFn) -> str:
    """Numbers far past 64 bits (and past Python's 4300-digit parsing limit) in every field."""
    digits = draw(st.integers(min_value=1, max_value=12_000))
    first = draw(st.sampled_from("123456789"))
    body = first + draw(st.sampled_from("0123456789")) * (digits - 1)
    number = draw(
        st.sampled_from(
            [
                body,
                "-" + body,
                body + "e" + str(digits),
                "1e" + body[:8],
                "-1e-" + body[:8],
                "0." + body,
                body + ".5",
                "-0",
            ]
        )
    )
    where = draw(st.sampled_from(["alone", "method", "data", "graph_id", "since", "snapshot"]))
    graph = f'"graph_id":"{SUBSCRIBED_GRAPH}"'
    method = draw(st.sampled_from(["subscribe", "unsubscribe", "heartbeat"]))
    return {
        "alone": number,
        "method": f'{{"method":{number}}}',
        "data": f'{{"method":"{method}","data":{number}}}',
        "graph_id": f'{{"method":"{method}","data":{{"graph_id":{number}}}}}',
        "since": f'{{"method":"{method}","data":{{{graph},"since":{number}}}}}',
        "snapshot": f'{{"method":"{method}","data":{{{graph},"snapshot":{number}}}}}',
    }[where]


def _not_a(kind: type | tuple[type, ...]) -> st.SearchStrategy[Any]:
    return json_values.filter(lambda value: not isinstance(value, kind))


WRONG_TYPES: dict[str, st.SearchStrategy[Any]] = {
    "method": _not_a(str) | st.text(max_size=20).filter(lambda text: text not in METHOD_NAMES),
    "data": _not_a(dict),
    "graph_id": _not_a(str) | st.just("") | st.text(min_size=256, max_size=300),
    "since": _not_a(int) | st.booleans() | st.integers(max_value=-1),
    "snapshot": _not_a(bool) | st.integers(0, 1) | st.sampled_from(["true", "false"]),
}


@st.composite
def wrong_type_frames(draw: st.DrawFn) -> str:
    """A subscribe, unsubscribe or heartbeat message with a wrong type in exactly one field."""
    method = draw(st.sampled_from(["subscribe", "unsubscribe", "heartbeat"]))
    graph_id = draw(st.sampled_from([SUBSCRIBED_GRAPH, BYSTANDER_GRAPH, "someone-elses"]))
    data: dict[str, Any] = {"graph_id": graph_id}
    if draw(st.booleans()):
        data["since"] = draw(st.integers(0, 3))
    if draw(st.booleans()):
        data["snapshot"] = draw(st.booleans())
    message: dict[str, Any] = {"method": method, "data": data if method != "heartbeat" else "ping"}
    field = draw(st.sampled_from(sorted(WRONG_TYPES)))
    wrong = draw(WRONG_TYPES[field])
    if field in ("method", "data"):
        message[field] = wrong
    elif method == "heartbeat":
        message["data"] = {field: wrong}
    else:
        data[field] = wrong
    return json.dumps(message, ensure_ascii=draw(st.booleans()))


# JSON escapes (lone and split surrogates, NUL, controls) and raw characters (direction marks,
# BOM, noncharacters, combining marks, astral characters, line separators).
UNICODE_ESCAPES = [
    "\\ud800",
    "\\udbff",
    "\\udc00",
    "\\udfff",
    "\\ud83d",
    "\\ude80",
    "\\ud83d\\ude80",
    "\\u0000",
    "\\u0001",
    "\\u001f",
    "\\u007f",
    "\\u202e",
    "\\u200f",
    "\\ufeff",
    "\\uffff",
    "\\ufffe",
]
UNICODE_CHARACTERS = [
    "\u202e",
    "\u202d",
    "\u200f",
    "\u200e",
    "\u2066",
    "\u200b",
    "\ufeff",
    "\ufffe",
    "\uffff",
    "\U0010ffff",
    "\U0001f680",
    "e\u0301",
    "\u0085",
    "\u2028",
    "\u2029",
    "图",
    "é",
    "test_graph",
    " ",
]


@st.composite
def unicode_text(draw: st.DrawFn) -> str:
    """The inside of a JSON string: a few edge-case escapes and characters."""
    pieces = st.sampled_from(UNICODE_ESCAPES) | st.sampled_from(UNICODE_CHARACTERS)
    return "".join(draw(st.lists(pieces, min_size=1, max_size=6)))


@st.composite
def unicode_frames(draw: st.DrawFn) -> str:
    text = draw(unicode_text())
    method = draw(st.sampled_from(["subscribe", "unsubscribe", "heartbeat"]))
    where = draw(st.sampled_from(["graph_id", "method", "data", "key", "since", "raw"]))
    return {
        "graph_id": f'{{"method":"{method}","data":{{"graph_id":"{text}"}}}}',
        "method": f'{{"method":"{text}","data":{{"graph_id":"{SUBSCRIBED_GRAPH}"}}}}',
        "data": f'{{"method":"{method}","data":"{text}"}}',
        "key": f'{{"method":"{method}","data":{{"graph_id":"{SUBSCRIBED_GRAPH}","{text}":1}}}}',
        "since": f'{{"method":"{method}","data":{{"graph_id":"test_graph","since":"{text}"}}}}',
        "raw": text,
    }[where]


VALID_MESSAGES: list[dict[str, Any]] = [
    {"method": "subscribe", "data": {"graph_id": SUBSCRIBED_GRAPH}},
    {"method": "subscribe", "data": {"graph_id": SUBSCRIBED_GRAPH, "since": 0}},
    {"method": "subscribe", "data": {"graph_id": BYSTANDER_GRAPH, "snapshot": True}},
    {"method": "unsubscribe", "data": {"graph_id": BYSTANDER_GRAPH}},
    {"method": "heartbeat", "data": "ping"},
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            paths += _paths(child, (*prefix, key))
    return paths


def _with(value: Any, path: tuple[Any, ...], change: Callable[[dict[str, Any], Any], None]) -> Any:
    """A deep copy of a message with `change(parent, key)` applied where `path` points."""
    copy = json.loads(json.dumps(value))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    change(parent, path[-1])
    return copy


@st.composite
def one_field_broken_frames(draw: st.DrawFn) -> str:
    """A valid message with one thing broken: a value, a key, or a character of its text."""
    message = draw(st.sampled_from(VALID_MESSAGES))
    path = draw(st.sampled_from(_paths(message)))
    how = draw(
        st.sampled_from(
            ["value", "delete", "rename", "extra", "string", "text", "truncate", "wrap"]
        )
    )
    if how == "value":
        replacement = draw(json_values)
        broken = _with(message, path, lambda parent, key: parent.__setitem__(key, replacement))
    elif how == "delete":
        broken = _with(message, path, lambda parent, key: parent.pop(key))
    elif how == "rename":
        new_key = draw(
            st.sampled_from([path[-1].upper(), path[-1] + " ", " " + path[-1], path[-1][:-1]])
            | st.text(max_size=12)
        )
        broken = _with(
            message, path, lambda parent, key: parent.__setitem__(new_key, parent.pop(key))
        )
    elif how == "extra":
        extra_key, extra_value = draw(st.text(max_size=12)), draw(json_values)
        broken = _with(
            message, path, lambda parent, key: parent.__setitem__(extra_key, extra_value)
        )
    elif how == "string":
        affix = draw(st.sampled_from([" ", "\t", "\u200b", "X", "\u0000", "é"]))
        at_start = draw(st.booleans())

        def change(parent: dict[str, Any], key: Any) -> None:
            old = parent[key]
            if isinstance(old, str):
                parent[key] = affix + old if at_start else old + affix
            else:
                parent[key] = str(old)

        broken = _with(message, path, change)
    else:
        text = json.dumps(message)
        if how == "text":
            position = draw(st.integers(0, len(text) - 1))
            action = draw(st.sampled_from(["drop", "double", "insert"]))
            inserted = draw(st.sampled_from(list('{}[]",:\\ 0aé')))
            return {
                "drop": text[:position] + text[position + 1 :],
                "double": text[:position] + text[position] + text[position:],
                "insert": text[:position] + inserted + text[position:],
            }[action]
        if how == "truncate":
            return text[: draw(st.integers(0, len(text) - 1))]
        return f"[{text}]"
    return json.dumps(broken, ensure_ascii=draw(st.booleans()))


# --- the fuzz tests: one strategy each ------------------------------------------------------


@fuzz_settings(max_examples=500)
@given(frame=random_json_frames)
async def test_random_json(fuzzer: Fuzzer, frame: str) -> None:
    await fuzzer.send(frame, "random JSON")


@fuzz_settings(max_examples=500)
@given(frame=random_text_frames)
async def test_random_text(fuzzer: Fuzzer, frame: str) -> None:
    await fuzzer.send(frame, "random text")


@fuzz_settings(max_examples=500)
@given(frame=random_byte_frames)
async def test_random_bytes_in_binary_frames(fuzzer: Fuzzer, frame: bytes) -> None:
    await fuzzer.send(frame, "binary frames")


@fuzz_settings(max_examples=300)
@given(frame=nested_frames())
async def test_deep_nesting(fuzzer: Fuzzer, frame: str) -> None:
    await fuzzer.send(frame, "deep nesting")


@fuzz_settings(max_examples=300)
@given(frame=huge_number_frames())
async def test_huge_numbers(fuzzer: Fuzzer, frame: str) -> None:
    await fuzzer.send(frame, "huge numbers")


@fuzz_settings(max_examples=500)
@given(frame=wrong_type_frames())
async def test_wrong_types_in_every_field(fuzzer: Fuzzer, frame: str) -> None:
    await fuzzer.send(frame, "wrong types")


@fuzz_settings(max_examples=500)
@given(frame=unicode_frames())
# Found by this test; kept as fixed examples. A lone surrogate in a refused graph_id; NUL in a
# graph_id (PostgreSQL text cannot hold NUL, SQLite can: fails only with DATABASE_URL=postgres).
@example(frame='{"method":"subscribe","data":{"graph_id":"\\ud800"}}')
@example(frame='{"method":"unsubscribe","data":{"graph_id":"a\\udfffb"}}')
@example(frame='{"method":"subscribe","data":{"graph_id":"\\u0000"}}')
async def test_unicode_edge_cases(fuzzer: Fuzzer, frame: str) -> None:
    await fuzzer.send(frame, "unicode")


@fuzz_settings(max_examples=500)
@given(frame=one_field_broken_frames())
async def test_valid_looking_messages_with_one_field_broken(fuzzer: Fuzzer, frame: str) -> None:
    await fuzzer.send(frame, "one field broken")


# --- afterwards ------------------------------------------------------------------------------


async def test_a_valid_subscriber_is_served_after_the_fuzzing(
    connect: Any, alice_token: str
) -> None:
    """Runs last: the process that took every frame above still serves a new subscriber."""
    client = await connect(token=alice_token)
    assert (await subscribe(client, SUBSCRIBED_GRAPH))["success"] is True

    result = make_result(node_exec_id="served-after-the-fuzzing")
    await send_execution_result(result)

    event = await client.receive_json_from(timeout=REPLY_TIMEOUT)
    assert event["data"]["node_exec_id"] == "served-after-the-fuzzing"
    print(f"fuzz figures: frames={FIGURES['frames']}")
