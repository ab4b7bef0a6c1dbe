"""Protocol buffers' wire format, written by hand: varints, fixed 64-bit and length-delimited
fields. For encoders of a few known messages where generated classes would cost more than they
give (query/perfetto.py's Perfetto trace; agents/otlp_encoder.py's OTLP requests take its varints).
Standard library only, so any component may use it.

Fields are written as `key` + value: the key is the field number and wire type as a varint.
A message is the concatenation of its fields; a nested message is a length-delimited field.
"""

from __future__ import annotations

import functools
import struct

VARINT, FIXED64, LENGTH_DELIMITED = 0, 1, 2
UINT64_MASK = (1 << 64) - 1
_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint (a negative int64 is masked with UINT64_MASK
    by the caller: ten bytes of two's complement). Keys and most lengths take the short paths."""
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


@functools.cache
def key(field: int, wire_type: int) -> bytes:
    """A field's key: few distinct ones are written, over and over."""
    return varint(field << 3 | wire_type)


def uint_field(field: int, value: int) -> bytes:
    """A varint field: uint32/64, int32/64 (negatives as two's complement), bool, enum."""
    return key(field, VARINT) + varint(value & UINT64_MASK)


def bytes_field(field: int, data: bytes) -> bytes:
    """A length-delimited field: bytes, or a nested message's encoding."""
    return key(field, LENGTH_DELIMITED) + varint(len(data)) + data


def string_field(field: int, text: str) -> bytes:
    """Any text as it is (names are data); only what UTF-8 cannot hold, a lone surrogate, becomes '?'."""
    return bytes_field(field, text.encode("utf-8", "replace"))


def double_field(field: int, value: float) -> bytes:
    return key(field, FIXED64) + struct.pack("<d", value)
