"""What the fast path writes to a daphne socket: whole, unmasked text frames (RFC 6455, 5.2)."""

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from executions.outbox import text_frame


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
