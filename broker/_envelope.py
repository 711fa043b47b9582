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
        due_ms: For a timer's wake-up, when it is due (epoch ms): it is sent a little ahead
            of time and held by the worker that receives it until then. Optional, so
            workers that predate it still read the envelope.
        v: Envelope format version; a consumer rejects versions it does not know.
    """

    kind: EnvelopeKind
    instance_id: str
    due_ms: int | None = None
    v: int = ENVELOPE_VERSION

    def encode(self) -> bytes:
        data: dict[str, object] = {"v": self.v, "kind": self.kind, "instance_id": self.instance_id}
        if self.due_ms is not None:
            data["due_ms"] = self.due_ms
        return orjson.dumps(data)

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
        due_ms = data.get("due_ms")
        if due_ms is not None and (not isinstance(due_ms, int) or isinstance(due_ms, bool)):
            raise EnvelopeError("envelope 'due_ms' must be an integer")
        return cls(kind=kind, instance_id=instance_id, due_ms=due_ms)


def turn_message(
    workflow: str, kind: EnvelopeKind, instance_id: str, *, delay_ms: int = 0,
    due_ms: int | None = None,
) -> OutgoingMessage:
    """The message asking for a turn of an instance (at priority 1, ahead of new work)."""
    return OutgoingMessage("internal", workflow, Envelope(kind, instance_id, due_ms).encode(),
                           delay_ms=delay_ms, priority=1)
