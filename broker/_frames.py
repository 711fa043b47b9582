"""Publishes and settlements on the wire: a message's method, content header and body
frames, and the ``basic.ack`` / ``basic.nack`` of a delivery.

pamqp encodes a frame by building an object for it and dispatching every field on its
declared type; for the five properties Warren sets, that was most of a publishing client's
CPU (2,000 ``create_batch`` creates: 0.22 of 0.50 s under cProfile) and a tenth of a busy
worker's (py-spy). The message shapes Warren publishes are few and fixed, so they are encoded
here directly, to exactly the bytes pamqp would produce (``tests/unit/test_frames.py``
compares them), with one deliberate difference: a float header value is sent as a double
(``d``), where pamqp sends a single-precision ``f`` and 0.1 arrives as 0.10000000149. A
header value of any other type is left to pamqp's encoder. Its inputs
are Warren's own (topology names, constants), so unlike pamqp it does not check exchange
names or delivery modes; an over-long string or an octet out of range is a ``ValueError``.

AMQP 0-9-1 §4.2.3: a frame is ``type:octet channel:short size:long payload 0xCE``; a
``basic.publish`` is followed by a content header (class, weight, body size, property flags,
properties) and the body, split into frames of at most the connection's content size.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

from pamqp import encode

from broker._base import HeaderValue

_FRAME_END: Final = b"\xce"
_FRAME_HEAD: Final = struct.Struct(">BHI")  # frame type, channel, payload size
_METHOD_FRAME, _HEADER_FRAME, _BODY_FRAME = 1, 2, 3
_BASIC: Final = 60  # the AMQP class of publish, ack and nack
_PUBLISH_METHOD: Final = struct.pack(">HHH", _BASIC, 40, 0)  # method publish (40), ticket 0
_CONTENT_HEAD: Final = struct.Struct(">HHQH")  # class, weight 0, body size, property flags
_MANDATORY: Final = b"\x01"
_NOT_MANDATORY: Final = b"\x00"

# Property flags, in the order the properties follow the flags (Basic.Properties).
_CONTENT_TYPE: Final = 0x8000
_HEADERS: Final = 0x2000
_DELIVERY_MODE: Final = 0x1000
_PRIORITY: Final = 0x0800
_MESSAGE_ID: Final = 0x0080

_LONG_LENGTH: Final = struct.Struct(">I")
_DOUBLE: Final = struct.Struct(">d")
# Integer header values take the smallest type that holds them, in pamqp's order of preference.
_INTEGER_TYPES: Final = (
    (-(2**7), 2**7 - 1, b"b", struct.Struct(">b")),
    (-(2**15), 2**15 - 1, b"s", struct.Struct(">h")),
    (0, 2**16 - 1, b"u", struct.Struct(">H")),
    (-(2**31), 2**31 - 1, b"I", struct.Struct(">i")),
    (0, 2**32 - 1, b"i", struct.Struct(">I")),
    (-(2**63), 2**63 - 1, b"l", struct.Struct(">q")),
)
_MAX_KEY_BYTES: Final = 128  # pamqp truncates longer field names; leave those to it


def publish_frames(
    channel: int,
    max_content_size: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    *,
    mandatory: bool,
    content_type: str | None,
    headers: Mapping[str, HeaderValue] | None,
    delivery_mode: int | None,
    message_id: str | None,
    priority: int | None,
) -> list[bytes]:
    """The frames of one published message, as byte strings to be sent in order.

    Raises:
        ValueError: A short string (exchange, routing key, content type, message id) is
            longer than 255 bytes, or an octet is outside 0-255.
    """
    method = b"".join((_PUBLISH_METHOD, _short_string(exchange), _short_string(routing_key),
                       _MANDATORY if mandatory else _NOT_MANDATORY))
    flags = 0
    properties: list[bytes] = []
    if content_type:
        flags |= _CONTENT_TYPE
        properties.append(_short_string(content_type))
    if headers is not None:
        flags |= _HEADERS
        properties.append(_field_table(headers))
    if delivery_mode is not None:
        flags |= _DELIVERY_MODE
        properties.append(_octet(delivery_mode))
    if priority is not None:
        flags |= _PRIORITY
        properties.append(_octet(priority))
    if message_id:
        flags |= _MESSAGE_ID
        properties.append(_short_string(message_id))
    content = _CONTENT_HEAD.pack(_BASIC, 0, len(body), flags) + b"".join(properties)
    frames = [_frame(_METHOD_FRAME, channel, method), _frame(_HEADER_FRAME, channel, content)]
    frames += [_frame(_BODY_FRAME, channel, body[i:i + max_content_size])
               for i in range(0, len(body), max_content_size)]
    return frames


def _frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return b"".join((_FRAME_HEAD.pack(frame_type, channel, len(payload)), payload, _FRAME_END))


def _short_string(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"{value[:40]!r}... is longer than an AMQP short string (255 bytes)")
    return bytes((len(raw),)) + raw


def _octet(value: int) -> bytes:
    if not 0 <= value <= 255:
        raise ValueError(f"{value} does not fit in an octet")
    return bytes((value,))


def _field_table(table: Mapping[str, HeaderValue]) -> bytes:
    parts: list[bytes] = []
    for key, value in sorted(table.items()):
        raw_key = key.encode()
        encoded = _table_value(value)
        if encoded is None or len(raw_key) > _MAX_KEY_BYTES:
            return encode.field_table(dict(table))
        parts += (bytes((len(raw_key),)), raw_key, encoded)
    payload = b"".join(parts)
    return _LONG_LENGTH.pack(len(payload)) + payload


def _table_value(value: HeaderValue) -> bytes | None:
    """A field value as pamqp encodes it, or ``None`` for a type left to pamqp."""
    if isinstance(value, str):
        raw = value.encode()
        return b"S" + _LONG_LENGTH.pack(len(raw)) + raw
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        for low, high, tag, packer in _INTEGER_TYPES:
            if low <= value <= high:
                return tag + packer.pack(value)
        return None
    if value is None:
        return b"V"
    if isinstance(value, float):
        return b"d" + _DOUBLE.pack(value)
    return None


_SETTLE: Final = struct.Struct(">HHQB")  # class, method, delivery tag, bits
_ACK_METHOD, _NACK_METHOD = 80, 120


def settle_frame(channel: int, delivery_tag: int, *, ack: bool, requeue: bool = True) -> bytes:
    """The ``basic.ack``, or ``basic.nack`` (requeueing or not), of one delivery."""
    if ack:
        return _frame(_METHOD_FRAME, channel, _SETTLE.pack(_BASIC, _ACK_METHOD, delivery_tag, 0))
    bits = 0b10 if requeue else 0  # bit 0: multiple (never), bit 1: requeue
    return _frame(_METHOD_FRAME, channel, _SETTLE.pack(_BASIC, _NACK_METHOD, delivery_tag, bits))
