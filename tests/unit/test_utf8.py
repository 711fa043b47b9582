"""pamqp's decoders replaced by broker._utf8 read valid input exactly as pamqp does."""

from __future__ import annotations

import datetime
from decimal import Decimal

from pamqp import decode, encode

from broker._utf8 import _field_table, _short_str, readable


def test_valid_tables_and_short_strings_read_as_pamqp_reads_them() -> None:
    table = {"x-trace": "t", "n": 7, "big": 2**40, "f": 1.5, "ok": True, "none": None,
             "list": [1, "two", {"three": 3}], "nested": {"é": "ü"}, "d": Decimal("1.25"),
             "at": datetime.datetime(2026, 12, 8, 1, 2, 3, tzinfo=datetime.UTC)}
    raw = encode.field_table(table)
    assert _field_table(raw) == decode.field_table(raw)
    for text in ("", "wf.instance-1.approval", "é" * 100):
        data = encode.short_string(text) + b"rest"
        assert _short_str(data) == decode.short_str(data)


def test_invalid_utf8_is_read_and_made_readable_within_255_bytes() -> None:
    raw = encode.field_table({"ok": "v"}).replace(b"ok", b"o\xff")
    ((key, value),) = _field_table(raw)[1].items()
    assert value == "v" and readable(key) == ("o\ufffd", False)
    consumed, text = _short_str(bytes([200]) + b"\xff" * 200)
    assert consumed == 201
    shown, ok = readable(text)
    assert not ok and len(shown.encode()) <= 255 and set(shown) == {"\ufffd"}


def test_a_time_past_what_datetime_holds_is_read_as_none() -> None:
    from pamqp import common

    from broker._utf8 import _timestamp

    now = common.Struct.timestamp.pack(1_765_000_000)
    assert _timestamp(now) == decode.timestamp(now)
    assert _timestamp(common.Struct.timestamp.pack(2**62)) == (8, None)
