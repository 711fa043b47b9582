"""The versioned JSON envelope of engine-to-engine messages on the ``internal`` exchange."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

from broker._base import OutgoingMessage

ENVELOPE_VERSION = 1

EnvelopeKind = Literal["wake", "step", "control"]


class EnvelopeError(ValueError):
    """A body that is not a valid envelope of a version this code understands."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """Asks a worker to run a turn of one instance.

    Attributes:
        kind: Why: ``wake`` (timer, retry, recovery), ``step`` (a step attempt ended) or
            ``control`` (pause, resume, terminate, restart).
        instance_id: The instance to advance.
        v: Envelope format version; a consumer rejects versions it does not know.
    """

    kind: EnvelopeKind
    instance_id: str
    v: int = ENVELOPE_VERSION

    def encode(self) -> bytes:
        return orjson.dumps({"v": self.v, "kind": self.kind, "instance_id": self.instance_id})

    @classmethod
    def decode(cls, body: bytes) -> Envelope:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise EnvelopeError(f"envelope is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise EnvelopeError("envelope is not a JSON object")
        if data.get("v") != ENVELOPE_VERSION:
            raise EnvelopeError(f"unsupported envelope version {data.get('v')!r}")
        kind, instance_id = data.get("kind"), data.get("instance_id")
        if kind not in ("wake", "step", "control") or not isinstance(instance_id, str):
            raise EnvelopeError("envelope needs a known 'kind' and a string 'instance_id'")
        return cls(kind=kind, instance_id=instance_id)


def turn_message(
    workflow: str, kind: EnvelopeKind, instance_id: str, *, delay_ms: int = 0
) -> OutgoingMessage:
    """The message asking for a turn of an instance (at priority 1, ahead of new work)."""
    return OutgoingMessage("internal", workflow, Envelope(kind, instance_id).encode(),
                           delay_ms=delay_ms, priority=1)
