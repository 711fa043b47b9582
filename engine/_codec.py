"""JSON encoding of values crossing into storage, with the size limits of API.md §9."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
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
    # orjson writes NaN and infinities as null: the value would come back changed.
    if b"null" in data and _has_non_finite(value):
        raise ValidationError(f"{what} holds NaN or an infinity, which JSON cannot carry")
    if len(data) > limit:
        raise LimitExceededError(f"{what} is {len(data)} bytes; the limit is {limit}")
    return data.decode()


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    if dataclasses.is_dataclass(value):  # orjson writes dataclasses as objects
        return any(_has_non_finite(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def validate_json_value(value: Any, *, what: str) -> None:
    """Raise like :func:`encode_json` if ``value`` could not be stored."""
    encode_json(value, what=what)


# orjson reads an integer outside [-2**63, 2**64) as a float: only where a number this long
# appears does the text need reading again, exactly, to tell.
_LONG_NUMBER = re.compile(rb"\d{19}")
_INT_RANGE = range(-(2**63), 2**64)


def decode_message_json(data: bytes, *, what: str) -> Any:
    """A message body's JSON, refused rather than changed: an integer that JSON from
    Warren's client could not carry (64 bits) would otherwise be stored as a float.

    Raises:
        ValidationError: ``data`` is not JSON, or holds an integer outside 64 bits.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"{what} is not JSON: {exc}") from None
    if _LONG_NUMBER.search(data):
        try:
            json.loads(data, parse_int=functools.partial(_exact_int, what=what))
        except ValidationError:
            raise
        except (ValueError, RecursionError) as exc:  # e.g. more digits than int() reads
            raise ValidationError(f"{what} holds a number JSON cannot carry: {exc}") from None
    return value


def _exact_int(text: str, *, what: str) -> int:
    number = int(text)
    if number not in _INT_RANGE:
        raise ValidationError(f"{what} holds an integer outside the 64-bit range: {text}")
    return number


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
