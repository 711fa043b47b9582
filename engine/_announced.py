"""What Warren's client says, in a create message, about the instance row it stored.

The client inserts the row before it publishes (``x-warren-stored``) and names the row's
key and creation time in two more headers. With those and the message's params, a worker
knows the whole instance as its first turn will find it (queued, no history), so it can
decide that turn before reading anything and write it in one statement (see
``engine._store._decided_turns``), which checks that the row is indeed as announced.
A create message without them (any other publisher) takes the general turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker import STORED_HEADER, Delivery
from engine import _history as h
from engine._codec import encode_json
from engine._store._decided_turns import StoredRow
from sdk.errors import ValidationError

PK_HEADER = "x-warren-pk"
CREATED_AT_HEADER = "x-warren-created-at"


@dataclass(frozen=True, slots=True)
class Announcement:
    """The stored row a create message announces: its key and creation time."""

    pk: int
    created_at_ms: int

    def headers(self) -> dict[str, str]:
        return {STORED_HEADER: "1", PK_HEADER: str(self.pk),
                CREATED_AT_HEADER: str(self.created_at_ms)}


@dataclass(frozen=True, slots=True)
class AnnouncedInstance:
    """A new instance as its create message describes it, enough to decide its first turn."""

    snapshot: h.InstanceSnapshot
    stored: StoredRow


def announced_instance(
    workflow: str, delivery: Delivery, instance_id: str, params: Any
) -> AnnouncedInstance | None:
    """The instance a create message stored by Warren's client (``x-warren-stored``, checked
    by the caller) announces, or ``None`` if it names no row."""
    headers = delivery.headers
    try:
        pk = int(str(headers[PK_HEADER]))
        created_at_ms = int(str(headers[CREATED_AT_HEADER]))
        params_json = encode_json(params, what="params")
    except (KeyError, ValueError, ValidationError):
        return None
    if delivery.message_id is None:
        return None
    # At fence 1: the first turn's lock increments the fence the client stored (0).
    snapshot = h.InstanceSnapshot(pk=pk, workflow=workflow, instance_id=instance_id,
                                  params=params, status=h.QUEUED, created_at_ms=created_at_ms,
                                  fence=1)
    return AnnouncedInstance(snapshot, StoredRow(delivery.message_id, params_json))
