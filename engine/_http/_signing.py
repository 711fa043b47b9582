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
import re
import time

SIGNATURE_HEADER = "X-Warren-Signature"
EVENT_ID_HEADER = "X-Warren-Event-Id"
"""De-duplicates an event sent over HTTP (its AMQP message id)."""
SIGNATURE_PREFIX = "sha256="
MAX_AGE_S = 300
"""A timestamped signature further than this from the server's clock is refused."""
_TIME = re.compile(r"[0-9]{1,12}")


def sign(secret: str, body: bytes) -> str:
    """The body-only ``X-Warren-Signature`` value (``sha256=<hex>``) for ``body``."""
    return f"{SIGNATURE_PREFIX}{_hmac(secret, body)}"


def sign_event(secret: str, target: str, event_id: str | None, body: bytes,
               now: float | None = None) -> str:
    """The timestamped ``X-Warren-Signature`` value (``t=..,v1=..``) of one event.

    ``target`` is ``<workflow>/<instance_id>/<event_type>``.
    """
    at = str(int(time.time() if now is None else now))
    return f"t={at},v1={_hmac(secret, signed_text(at, target, event_id, body))}"


def signed_text(at: str, target: str, event_id: str | None, body: bytes) -> bytes:
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
    fields = [part.strip().split("=", 1) for part in header.split(",") if "=" in part]
    times = [value for name, value in fields if name.lower() == "t"]
    if len(times) != 1 or not _TIME.fullmatch(times[0]):
        return False
    (at,) = times
    if abs((time.time() if now is None else now) - int(at)) > MAX_AGE_S:
        return False
    expected = _hmac(secret, signed_text(at, target, event_id, body)).encode()
    # Several v1 values may be sent (a secret being rotated): one must match.
    return any(hmac.compare_digest(value.lower().encode(), expected)
               for name, value in fields if name.lower() == "v1")


def _hmac(secret: str, text: bytes) -> str:
    return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()
