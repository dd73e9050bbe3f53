"""Frames written straight to the socket must be what the websockets library would
send: parsed back by that library's own frame reader (its client side)."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from api.frames import frame_text, text_frame


def parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser: Generator[None, None, Frame] = Frame.parse(
        reader.read_exact, mask=False, max_size=None, extensions=[]
    )
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        assert not reader.buffer  # the frame is exactly its bytes, nothing left over
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_matches_the_websockets_parser(size: int) -> None:
    message = ("é" * (size // 2) + "a" * (size % 2)).encode()
    frame = parse(text_frame(message))
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert frame.data == message
    assert frame_text(text_frame(message)) == message.decode()


def test_text_frame_is_what_websockets_serializes() -> None:
    message = b'{"id":"1","type":"next","payload":{"data":{}}}'
    expected = Frame(Opcode.TEXT, message).serialize(mask=False, extensions=[])
    assert text_frame(message) == expected
