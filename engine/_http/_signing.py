"""Webhook signatures (``X-Warren-Signature``), keyed with ``WARREN_WEBHOOK_SECRET``.

Two forms are accepted:

- ``t=<unix seconds>,v1=<hex>``: HMAC-SHA256 of the timestamp, the event's workflow,
  instance and type, its ``X-Warren-Event-Id`` and the raw body (see :func:`signed_text`).
  Bound to that one event and to :data:`MAX_AGE_S` around its time, it cannot be replayed
  to another instance, as another event, or later. Warren's own CLI sends this form.
- ``sha256=<hex>``: HMAC-SHA256 of the raw body alone (GitHub's convention), for relays
  that can sign nothing else. Such a signature is valid for any instance and at any time:
  whoever captures one request can send its body again, anywhere.

Kept free of web framework imports so the CLI can sign events cheaply.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Warren-Signature"
SIGNATURE_PREFIX = "sha256="
MAX_AGE_S = 300
"""A timestamped signature further than this from the server's clock is refused."""


def sign(secret: str, body: bytes) -> str:
    """The body-only ``X-Warren-Signature`` value (``sha256=<hex>``) for ``body``."""
    return f"{SIGNATURE_PREFIX}{_hmac(secret, body)}"


def sign_event(secret: str, target: str, event_id: str | None, body: bytes,
               now: float | None = None) -> str:
    """The timestamped ``X-Warren-Signature`` value (``t=..,v1=..``) of one event.

    ``target`` is ``<workflow>/<instance_id>/<event_type>``.
    """
    at = int(time.time() if now is None else now)
    return f"t={at},v1={_hmac(secret, signed_text(at, target, event_id, body))}"


def signed_text(at: int, target: str, event_id: str | None, body: bytes) -> bytes:
    """What a timestamped signature covers: the lines ``<t>``, ``<target>`` and
    ``<event id>`` (empty without one), then the raw body. None of the first three can
    hold a newline, so no two events share a text."""
    return f"{at}\n{target}\n{event_id or ''}\n".encode() + body


def signature_matches(secret: str, header: str, body: bytes, *, target: str,
                      event_id: str | None, now: float | None = None) -> bool:
    """Whether ``header`` signs this event (either form), compared in constant time."""
    header = header.strip()
    if header.lower().startswith(SIGNATURE_PREFIX):
        return hmac.compare_digest(header.lower().encode(), sign(secret, body).encode())
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    at, given = fields.get("t", ""), fields.get("v1", "")
    if not at.isdigit() or abs((time.time() if now is None else now) - int(at)) > MAX_AGE_S:
        return False
    expected = _hmac(secret, signed_text(int(at), target, event_id, body))
    return hmac.compare_digest(given.lower().encode(), expected.encode())


def _hmac(secret: str, text: bytes) -> str:
    return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()
