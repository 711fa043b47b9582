"""Settings of the HTTP API: auth token, webhook secret, body size limits (``WARREN_API_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sdk.errors import ValidationError

MIB = 1024 * 1024

#: Params and event payloads are limited to 1 MiB as Warren encodes them (API.md §9),
#: which the store checks; a client may escape what Warren writes as two bytes into six
#: (``é`` as ``\u00e9``, Python's ``json.dumps`` default), so the body may be three times
#: larger, plus the envelope around it.
DEFAULT_MAX_BODY_BYTES = 3 * MIB + 64 * 1024
#: A batch creates up to 100 instances; a cap below 100 such bodies keeps one request from
#: pinning memory (batches of large params need ``WARREN_API_MAX_BATCH_BODY`` raised).
DEFAULT_MAX_BATCH_BODY_BYTES = 16 * MIB


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Configuration of the HTTP API.

    Attributes:
        token: When set, every ``/workflows`` request needs ``Authorization: Bearer <token>``.
            Env ``WARREN_API_TOKEN``.
        webhook_secret: When set, the events endpoint needs an ``X-Warren-Signature``
            keyed with it (``engine._http._signing``) instead of the bearer token.
            Env ``WARREN_WEBHOOK_SECRET``.
        max_body_bytes: Largest request body accepted (413 above it).
            Env ``WARREN_API_MAX_BODY``.
        max_batch_body_bytes: Largest body of a batch create. Env ``WARREN_API_MAX_BATCH_BODY``.
    """

    token: str | None = None
    webhook_secret: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch_body_bytes: int = DEFAULT_MAX_BATCH_BODY_BYTES

    @classmethod
    def from_env(cls) -> ApiSettings:
        """Settings from ``WARREN_API_TOKEN``, ``WARREN_WEBHOOK_SECRET``, ``WARREN_API_MAX_*``."""
        return cls(
            token=os.environ.get("WARREN_API_TOKEN") or None,
            webhook_secret=os.environ.get("WARREN_WEBHOOK_SECRET") or None,
            max_body_bytes=_size("WARREN_API_MAX_BODY", DEFAULT_MAX_BODY_BYTES),
            max_batch_body_bytes=_size("WARREN_API_MAX_BATCH_BODY", DEFAULT_MAX_BATCH_BODY_BYTES),
        )


def _size(var: str, default: int) -> int:
    raw = os.environ.get(var)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{var}={raw!r} is not a number of bytes") from None
    if value < 1:
        raise ValidationError(f"{var} must be positive, got {value}")
    return value
