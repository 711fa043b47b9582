"""Webhook signatures: ``X-Warren-Signature: sha256=<hex HMAC-SHA256 of the raw body>``.

The GitHub convention; the key is ``WARREN_WEBHOOK_SECRET``. Kept free of web framework
imports so the CLI can sign events cheaply.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Warren-Signature"
SIGNATURE_PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The ``X-Warren-Signature`` header value for ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_PREFIX}{digest}"


def signature_matches(secret: str, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body``, compared in constant time."""
    return hmac.compare_digest(header.strip().lower().encode(), sign(secret, body).encode())
