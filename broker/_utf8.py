"""Short strings that are not UTF-8, read without killing the connection.

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

from pamqp import decode

_tolerant = False


def _short_str(value: bytes) -> tuple[int, str]:
    try:
        length = value[0]
    except IndexError as err:
        raise ValueError("Could not unpack short string value") from err
    return length + 1, value[1:length + 1].decode("utf-8", "surrogateescape")


def tolerate_invalid_utf8() -> None:
    """Make pamqp read short strings leniently (once per process)."""
    global _tolerant
    if _tolerant:
        return
    # ``decode.field_table`` calls the module's ``short_str``; ``by_type`` goes through
    # ``METHODS``.
    decode.short_str = _short_str
    decode.METHODS["shortstr"] = _short_str
    _tolerant = True


def readable(text: str) -> tuple[str, bool]:
    """``text`` as it can be sent on, and whether it was valid UTF-8 (bytes that were not
    are replaced by U+FFFD)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), False
    return text, True

