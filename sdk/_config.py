"""Step configuration: retry policy, timeout, and how user dicts become validated config."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from sdk._durations import Duration, duration_ms, parse_duration
from sdk.errors import LimitExceededError, ValidationError

Backoff = Literal["constant", "linear", "exponential"]
DelayFunction = Callable[[Any, BaseException], Duration]

DEFAULT_RETRY_LIMIT = 5
DEFAULT_RETRY_DELAY = timedelta(seconds=10)
DEFAULT_TIMEOUT = timedelta(minutes=10)

MAX_STEP_NAME = 256
MAX_SLEEP = timedelta(days=365)
_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
_WORKFLOW_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed attempt is retried (Cloudflare's defaults).

    Attributes:
        limit: Retries after the first attempt; at most ``limit + 1`` attempts.
        delay: Base wait, or a callable ``(ctx, error) -> duration`` deciding each wait.
        backoff: ``constant`` (delay), ``linear`` (delay·n) or ``exponential`` (delay·2^(n-1)),
            where n is the number of the attempt that failed.
    """

    limit: int = DEFAULT_RETRY_LIMIT
    delay: timedelta | DelayFunction = DEFAULT_RETRY_DELAY
    backoff: Backoff = "exponential"

    def wait_after(self, attempt: int, ctx: Any, error: BaseException) -> timedelta:
        """Wait before the attempt after ``attempt`` (1-based) failed with ``error``."""
        if callable(self.delay):
            chosen: Duration = self.delay(ctx, error)
            return parse_duration(chosen)
        if self.backoff == "constant":
            return self.delay
        if self.backoff == "linear":
            return self.delay * attempt
        return self.delay * (1 << (attempt - 1))

    def to_json(self) -> dict[str, Any]:
        delay: Any = "callable" if callable(self.delay) else duration_ms(self.delay)
        return {"limit": self.limit, "delay_ms": delay, "backoff": self.backoff}


@dataclass(frozen=True, slots=True)
class StepConfig:
    """Validated configuration of one step (or of a rollback handler)."""

    retries: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: timedelta = DEFAULT_TIMEOUT

    def to_json(self) -> dict[str, Any]:
        return {"retries": self.retries.to_json(), "timeout_ms": duration_ms(self.timeout)}


_DEFAULT_STEP_CONFIG = StepConfig()


def retry_policy(value: Mapping[str, Any] | RetryPolicy | None) -> RetryPolicy:
    """Build a :class:`RetryPolicy` from the ``retries=`` dict of ``step.do``."""
    if value is None:
        return RetryPolicy()
    if isinstance(value, RetryPolicy):
        return value
    if not isinstance(value, Mapping):
        raise ValidationError(f"retries must be a dict, got {type(value).__name__}")
    unknown = set(value) - {"limit", "delay", "backoff"}
    if unknown:
        raise ValidationError(f"unknown retries option(s): {', '.join(sorted(unknown))}")
    limit = value.get("limit", DEFAULT_RETRY_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValidationError(f"retries.limit must be an integer >= 0, got {limit!r}")
    backoff = value.get("backoff", "exponential")
    if backoff not in ("constant", "linear", "exponential"):
        raise ValidationError(
            f"retries.backoff must be 'constant', 'linear' or 'exponential', got {backoff!r}"
        )
    raw_delay = value.get("delay", DEFAULT_RETRY_DELAY)
    delay = raw_delay if callable(raw_delay) else parse_duration(raw_delay)
    return RetryPolicy(limit=limit, delay=delay, backoff=backoff)


def step_config(
    retries: Mapping[str, Any] | RetryPolicy | None = None, timeout: Duration | None = None
) -> StepConfig:
    """Build a :class:`StepConfig`, validating every part."""
    if retries is None and timeout is None:
        return _DEFAULT_STEP_CONFIG  # the common case; replay asks for it at every step
    parsed_timeout = DEFAULT_TIMEOUT if timeout is None else parse_duration(timeout)
    if parsed_timeout <= timedelta(0):
        raise ValidationError("timeout must be greater than zero")
    return StepConfig(retries=retry_policy(retries), timeout=parsed_timeout)


def rollback_step_config(value: Mapping[str, Any] | None) -> StepConfig:
    """Build the handler config from ``rollback_config={"retries": ..., "timeout": ...}``."""
    if value is None:
        return _DEFAULT_STEP_CONFIG  # as for step_config: asked for at every replayed step
    unknown = set(value) - {"retries", "timeout"}
    if unknown:
        raise ValidationError(f"unknown rollback_config option(s): {', '.join(sorted(unknown))}")
    return step_config(value.get("retries"), value.get("timeout"))


def check_step_name(name: object) -> str:
    """Return ``name`` if it is a valid step name, else raise :class:`ValidationError`."""
    if not isinstance(name, str) or not name:
        raise ValidationError(f"step name must be a non-empty string, got {name!r}")
    if len(name) > MAX_STEP_NAME:
        raise LimitExceededError(f"step name is {len(name)} chars; the limit is {MAX_STEP_NAME}")
    return name


def check_instance_id(value: object) -> str:
    """Return ``value`` if it is a valid instance id (``[A-Za-z0-9_-]{1,100}``)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValidationError(
            f"invalid instance id {value!r}: use 1-100 characters of [A-Za-z0-9_-]"
        )
    return value


def check_event_type(value: object) -> str:
    """Return ``value`` if it is a valid event type (``[A-Za-z0-9_-]{1,100}``)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValidationError(
            f"invalid event type {value!r}: use 1-100 characters of [A-Za-z0-9_-]"
        )
    return value


def check_workflow_name(value: object) -> str:
    """Return ``value`` if it is a valid workflow name: up to 64 characters of
    ``[A-Za-z0-9_-]``, not starting with ``-``."""
    if not isinstance(value, str) or not _WORKFLOW_NAME.fullmatch(value):
        raise ValidationError(
            f"invalid workflow name {value!r}: use up to 64 characters of [A-Za-z0-9_-], "
            "not starting with '-'"
        )
    return value
