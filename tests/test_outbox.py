"""What the fast path writes to a daphne socket: whole, unmasked text frames (RFC 6455, 5.2)."""

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from executions.outbox import text_frame, wire_text_frame
from executions.protocol import CACHED_FRAME_LIMIT, numbered_frame


def parsed(wire: bytes) -> tuple[Frame, bytes]:
    """The frame an independent parser (the websockets library's) reads, and what is left."""
    reader = StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        return done.value, bytes(reader.buffer)
    raise AssertionError("the parser wanted more bytes than the frame has")


# The three length encodings and their edges: 7 bits, 16 bits, 64 bits.
@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 1_000_003])
def test_a_text_frame_carries_its_payload_whole_in_any_length_encoding(size: int) -> None:
    payload = b"x" * size

    frame, rest = parsed(text_frame(payload))

    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload
    assert rest == b""


def test_frames_written_back_to_back_are_read_back_one_by_one() -> None:
    wire = text_frame(b'{"a":1}') + text_frame(b"x" * 300)

    first, rest = parsed(wire)
    second, rest = parsed(rest)

    assert (first.data, second.data, rest) == (b'{"a":1}', b"x" * 300, b"")


def test_a_frame_sent_to_many_connections_is_built_once() -> None:
    text = '{"method":"execution_event","data":{}}'

    first = wire_text_frame(text)

    assert wire_text_frame(text) is first
    assert parsed(first)[0].data == text.encode()


def test_a_frame_too_large_to_keep_is_still_built_whole() -> None:
    text = "x" * (CACHED_FRAME_LIMIT + 1)

    assert parsed(wire_text_frame(text))[0].data == text.encode()


def test_every_numbered_subscriber_gets_the_same_numbered_text() -> None:
    frame = '{"method":"execution_event","channel":"g"}'

    first = numbered_frame(frame, 7)

    assert first == '{"method":"execution_event","channel":"g","seq":7}'
    assert numbered_frame(frame, 7) is first
    assert numbered_frame(frame, 8) == '{"method":"execution_event","channel":"g","seq":8}'
