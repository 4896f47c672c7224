"""What the fast path writes to a socket: whole, unmasked text frames (RFC 6455, 5.2), and
during one hand-out of several events, each socket's frames in one write."""

import logging
import threading

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from executions.outbox import (
    HELD_BYTES_PER_SOCKET,
    frames_sent_together,
    text_frame,
    wire_text_frame,
    write_frame,
)
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


class Socket:
    """A FrameWriter that keeps each write it is given, as one socket send."""

    def __init__(self, fails: bool = False) -> None:
        self.writes: list[bytes] = []
        self.fails = fails

    def write_now(self, data: bytes) -> None:
        if self.fails:
            raise OSError("connection reset")
        self.writes.append(data)


def frames(count: int, prefix: str) -> list[bytes]:
    return [wire_text_frame(f'{{"{prefix}":{number}}}') for number in range(count)]


def test_outside_a_hand_out_each_frame_is_written_at_once() -> None:
    socket = Socket()

    for frame in frames(3, "a"):
        write_frame(socket, frame)

    assert socket.writes == frames(3, "a")


def test_during_a_hand_out_each_socket_gets_its_frames_in_order_in_one_write_at_its_end() -> None:
    first, second = Socket(), Socket()

    with frames_sent_together():
        for mine, theirs in zip(frames(50, "a"), frames(50, "b"), strict=True):
            write_frame(first, mine)
            write_frame(second, theirs)
        assert first.writes == second.writes == []  # nothing before the hand-out ends

    assert first.writes == [b"".join(frames(50, "a"))]
    assert second.writes == [b"".join(frames(50, "b"))]


def test_a_nested_hand_out_writes_only_when_the_outermost_ends() -> None:
    socket = Socket()

    with frames_sent_together():
        write_frame(socket, frames(1, "a")[0])
        with frames_sent_together():
            write_frame(socket, frames(2, "a")[1])
        assert socket.writes == []

    assert socket.writes == [b"".join(frames(2, "a"))]


def test_a_socket_whose_held_frames_reach_the_cap_gets_them_during_the_hand_out() -> None:
    """So that the server's flow control sees a client that stopped reading within one hand-out."""
    socket = Socket()
    large = wire_text_frame("x" * (HELD_BYTES_PER_SOCKET // 2))
    small = frames(1, "after")[0]

    with frames_sent_together():
        write_frame(socket, large)
        assert socket.writes == []
        write_frame(socket, large)
        assert socket.writes == [large + large]  # the cap reached: written at once
        write_frame(socket, small)
        assert socket.writes == [large + large]

    assert socket.writes == [large + large, small]


def test_a_socket_that_fails_its_write_costs_the_others_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, healthy = Socket(fails=True), Socket()

    with caplog.at_level(logging.ERROR, "executions.outbox"), frames_sent_together():
        write_frame(broken, frames(1, "a")[0])
        write_frame(healthy, frames(1, "b")[0])

    assert healthy.writes == frames(1, "b")
    assert "writing held frames to a socket failed" in caplog.text


def test_a_hand_out_holds_only_its_own_threads_frames() -> None:
    held, elsewhere = Socket(), Socket()

    with frames_sent_together():
        write_frame(held, frames(1, "a")[0])
        other = threading.Thread(target=write_frame, args=(elsewhere, frames(1, "b")[0]))
        other.start()
        other.join(timeout=5)
        assert elsewhere.writes == frames(1, "b")  # another thread's loop writes at once
        assert held.writes == []

    assert held.writes == frames(1, "a")
