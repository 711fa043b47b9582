"""JSON encoding of values crossing into storage, with the size limits of API.md §9."""

from __future__ import annotations

from typing import Any

import orjson

from sdk.errors import LimitExceededError, ValidationError, WarrenError

MAX_VALUE_BYTES = 1024 * 1024


def encode_json(value: Any, *, what: str, limit: int = MAX_VALUE_BYTES) -> str:
    """Serialize ``value`` to JSON text, enforcing that it is JSON and at most ``limit`` bytes.

    Raises:
        ValidationError: the value is not JSON-serializable.
        LimitExceededError: the encoded value is larger than ``limit``.
    """
    try:
        data = orjson.dumps(value)
    except TypeError as exc:
        raise ValidationError(f"{what} is not JSON-serializable: {exc}") from None
    if len(data) > limit:
        raise LimitExceededError(f"{what} is {len(data)} bytes; the limit is {limit}")
    return data.decode()


def validate_json_value(value: Any, *, what: str) -> None:
    """Raise like :func:`encode_json` if ``value`` could not be stored."""
    encode_json(value, what=what)


def decode_json(text: str | None) -> Any:
    """Inverse of :func:`encode_json`; ``None`` stays ``None``."""
    return None if text is None else orjson.loads(text)


def public_error(error: Any) -> dict[str, Any] | None:
    """A recorded error as users see it (status JSON, lifecycle events): its name and
    message, without the engine's own flags (``non_retryable``, ``abandoned``)."""
    if not isinstance(error, dict):
        return None
    return {"name": error.get("name"), "message": error.get("message")}


MAX_ERROR_MESSAGE = 16 * 1024


def error_dict(exc: BaseException) -> dict[str, Any]:
    """``{"name", "message"}`` of an exception, as recorded in history and status JSON.

    Messages are cut at 16 KiB: an exception carrying a huge text must not make its turn
    impossible to store.
    """
    error = exc.to_dict() if isinstance(exc, WarrenError) else {
        "name": type(exc).__name__, "message": str(exc)}
    message = str(error.get("message", ""))
    if len(message) > MAX_ERROR_MESSAGE:
        error["message"] = message[:MAX_ERROR_MESSAGE] + " … (truncated)"
    return error
