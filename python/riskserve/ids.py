"""Request ids the server makes when a client sent none: UUIDv7 (RFC 9562), so
ids sort by time and the prediction log's id index takes them in order."""

from __future__ import annotations

import os
import time
import uuid


def uuid7() -> str:
    """A UUIDv7: 48 bits of Unix milliseconds, version 7, 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 68) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # the RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return str(uuid.UUID(int=value))


def uuid7_millis(text: str) -> int:
    """The Unix milliseconds of a UUIDv7 (ValueError when `text` is not one)."""
    u = uuid.UUID(text)
    if u.version != 7:
        raise ValueError(f"{text!r} is not a UUIDv7")
    return u.int >> 80
