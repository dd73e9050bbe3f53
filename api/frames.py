"""RFC 6455 text frames as a server sends them: built once per (message, operation
id) by the multiplexer, and read back for the ASGI fallback."""

from __future__ import annotations

import struct


def text_frame(message: bytes) -> bytes:
    """An unmasked, unfragmented RFC 6455 text frame (server to client)."""
    n = len(message)
    if n < 126:
        return bytes((0x81, n)) + message
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + message
    return struct.pack("!BBQ", 0x81, 127, n) + message


def frame_text(frame: bytes) -> str:
    """The message a frame from :func:`text_frame` carries (for the ASGI fallback)."""
    size = frame[1]
    start = 2 if size < 126 else 4 if size == 126 else 10
    return frame[start:].decode()
