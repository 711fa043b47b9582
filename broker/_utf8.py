"""Short strings that are not UTF-8 (and times past the year 9999), read without killing
the connection.

AMQP's short strings (routing keys, message ids, header names, ...) are bytes; RabbitMQ
passes on whatever a publisher sent. pamqp decodes them as strict UTF-8, and a delivery
whose routing key or message id is not fails in aiormq's frame reader, which closes the
whole connection: after reconnecting, the same message comes first again, so one such
message from a foreign publisher would stop the worker for good. Once
:func:`tolerate_invalid_utf8` has run, such bytes are read with ``surrogateescape`` (valid
UTF-8 reads exactly as before), and :func:`readable` tells the delivery that holds them,
which is then dead-lettered.
"""

from __future__ import annotations

import datetime
import struct

from pamqp import common, decode

_tolerant = False
_SHORT_STRING_BYTES = 255


def _short_str(value: bytes) -> tuple[int, str]:
    try:
        length = value[0]
    except IndexError as err:
        raise ValueError("Could not unpack short string value") from err
    return length + 1, value[1:length + 1].decode("utf-8", "surrogateescape")


def _field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """pamqp's ``field_table`` (4.0), with its keys read as :func:`_short_str` reads."""
    try:
        length = common.Struct.integer.unpack(value[0:4])[0]
        offset, end = 4, 4 + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        table: common.FieldTable = {}
        while offset < end:
            key_length = value[offset]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset:offset + key_length].decode("utf-8", "surrogateescape")
            offset += key_length
            consumed, item = decode.embedded_value(value[offset:])
            offset += consumed
            table[key] = item
        return end, table
    except (struct.error, TypeError, IndexError) as err:
        raise ValueError("Could not unpack data") from err


def _timestamp(value: bytes) -> tuple[int, datetime.datetime | None]:
    """pamqp's ``timestamp``, but a time ``datetime`` cannot hold (past the year 9999) is
    read as none instead of failing the frame (and the connection with it)."""
    try:
        return decode.timestamp(value)
    except (ValueError, OverflowError, OSError):
        if len(value) < 8:
            raise
        return 8, None


def tolerate_invalid_utf8() -> None:
    """Make pamqp read short strings and table keys leniently (once per process)."""
    global _tolerant
    if _tolerant:
        return
    # pamqp looks both up by type when it decodes a frame (``METHODS``) or a table value
    # (``TABLE_MAPPING``): short strings are the routing key, message id, content type, ...;
    # tables are the headers, whose keys are short strings too.
    decode.METHODS["shortstr"] = _short_str
    decode.METHODS["table"] = _field_table
    decode.TABLE_MAPPING[b"F"] = _field_table
    decode.METHODS["timestamp"] = _timestamp
    decode.TABLE_MAPPING[b"T"] = _timestamp
    _tolerant = True


def readable(text: str) -> tuple[str, bool]:
    """``text`` as it can be sent on, and whether it was valid UTF-8: bytes that were not
    are replaced by U+FFFD, and the result cut to what fits a short string (255 bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        replaced = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return replaced.encode()[:_SHORT_STRING_BYTES].decode("utf-8", "ignore"), False
    return text, True
