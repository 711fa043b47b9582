"""``broker._frames`` encodes a publish to the bytes pamqp would, floats as doubles."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import pytest
from aiormq.abc import ChannelFrame
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from broker._base import HeaderValue
from broker._frames import publish_frames, settle_frame

INTEGERS = [0, 1, -1, 127, 128, -128, -129, 32767, 32768, -32768, -32769, 65535, 65536,
            2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32 - 1, 2**32, 2**63 - 1, -(2**63)]


def pamqp_frames(channel: int, max_content: int, exchange: str, routing_key: str,
                 body: bytes, *, mandatory: bool, properties: Mapping[str, Any]) -> bytes:
    """What aiormq sends for the same publish (its ``ChannelFrame.marshall`` of pamqp frames)."""
    props = commands.Basic.Properties(**properties)
    frames: list[Any] = [
        commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
        ContentHeader(properties=props, body_size=len(body)),
        *(ContentBody(body[i:i + max_content]) for i in range(0, len(body), max_content)),
    ]
    return ChannelFrame.marshall(channel, frames).payload


def decode_all(raw: bytes) -> list[tuple[int, Any]]:
    """(channel, frame) of each frame in ``raw``, decoded by pamqp as a consumer would."""
    decoded = []
    while raw:
        consumed, channel, value = frame.unmarshal(raw)
        decoded.append((channel, value))
        raw = raw[consumed:]
    return decoded


CASES: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("no properties", {"content_type": None, "delivery_mode": None, "priority": None}),
    ("empty headers", {"headers": {}}),
    ("message id", {"message_id": "0123456789abcdef0123456789abcdef"}),
    ("empty message id", {"message_id": ""}),
    ("unicode", {"message_id": "id-ü-✓", "headers": {"clé": "välue ✓"}}),
    ("every scalar", {"headers": {"s": "text", "t": True, "f": False, "n": None,
                                  "z": "", "pk": 12345678901, "attempt": 3}}),
    ("integers", {"headers": {f"k{i:02d}": v for i, v in enumerate(INTEGERS)}}),
    ("long key (left to pamqp)", {"headers": {"k" * 129: 1}}),
    ("priority 1, transient", {"priority": 1, "delivery_mode": 1}),
]


@pytest.mark.parametrize("mandatory", [True, False])
@pytest.mark.parametrize(("name", "overrides"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("body", [b"", b'{"id":"a"}', bytes(range(256)) * 3],
                         ids=["empty", "small", "three frames"])
def test_publish_frames_match_pamqp(name: str, overrides: dict[str, Any], body: bytes,
                                    mandatory: bool) -> None:
    properties: dict[str, Any] = {"content_type": "application/json", "headers": None,
                                  "delivery_mode": 2, "message_id": None, "priority": 0,
                                  **overrides}
    max_content = 300  # the three-frame body spans 768 bytes
    ours = b"".join(publish_frames(
        7, max_content, "ns.internal", "wf.key-1", body, mandatory=mandatory, **properties))
    assert ours == pamqp_frames(7, max_content, "ns.internal", "wf.key-1", body,
                                mandatory=mandatory, properties=properties)


def test_publish_frames_decode_back() -> None:
    """The frames round-trip through pamqp's decoder: what a consumer reads."""
    headers: dict[str, HeaderValue] = {"pk": 2**40, "who": "wörker", "ok": True}
    raw = b"".join(publish_frames(3, 4096, "ex", "rk", b"body", mandatory=True,
                                  content_type="application/json", headers=headers,
                                  delivery_mode=2, message_id="m-1", priority=1))
    decoded = decode_all(raw)
    (_, method), (_, header), (_, body) = decoded
    assert isinstance(method, commands.Basic.Publish)
    assert isinstance(header, ContentHeader) and isinstance(body, ContentBody)
    assert {c for c, _ in decoded} == {3}
    assert (method.exchange, method.routing_key, method.mandatory) == ("ex", "rk", True)
    assert header.body_size == 4
    assert header.properties.headers == headers
    assert (header.properties.message_id, header.properties.priority) == ("m-1", 1)
    assert body.value == b"body"


@pytest.mark.parametrize("field", ["exchange", "routing_key", "message_id", "content_type"])
def test_overlong_short_strings_are_refused(field: str) -> None:
    args: dict[str, Any] = {"exchange": "ex", "routing_key": "rk", "message_id": "m",
                            "content_type": "application/json"}
    args[field] = "x" * 256
    with pytest.raises(ValueError, match="255 bytes"):
        publish_frames(1, 4096, args["exchange"], args["routing_key"], b"", mandatory=True,
                       content_type=args["content_type"], headers=None, delivery_mode=2,
                       message_id=args["message_id"], priority=0)


def test_out_of_range_octet_is_refused() -> None:
    with pytest.raises(ValueError, match="octet"):
        publish_frames(1, 4096, "ex", "rk", b"", mandatory=True, content_type=None,
                       headers=None, delivery_mode=2, message_id=None, priority=256)


@pytest.mark.parametrize(("ack", "requeue"), [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("tag", [1, 2**32, 2**63 - 1])
def test_settle_frame_matches_pamqp(ack: bool, requeue: bool, tag: int) -> None:
    method = (commands.Basic.Ack(delivery_tag=tag) if ack
              else commands.Basic.Nack(delivery_tag=tag, requeue=requeue))
    assert settle_frame(5, tag, ack=ack, requeue=requeue) == frame.marshal(method, 5)


def test_float_headers_go_as_doubles_and_decode_exactly() -> None:
    # pamqp would send a single-precision float ("f"): 0.1 would come back as 0.100000001.
    raw = b"".join(publish_frames(1, 4096, "ex", "rk", b"", mandatory=False,
                                  content_type=None, headers={"ratio": 0.1, "n": 1},
                                  delivery_mode=2, message_id=None, priority=None))
    (_, _), (_, header) = decode_all(raw)
    assert isinstance(header, ContentHeader)
    assert header.properties.headers == {"ratio": 0.1, "n": 1}
    assert b"d" + struct.pack(">d", 0.1) in raw
