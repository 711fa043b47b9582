"""Worker configuration: explicit arguments win, then ``WARREN_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

from sdk.errors import ValidationError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///warren.db"
# Checked here, not in engine._lifecycle, so reading settings loads no database stack.
LIFECYCLE_LEVELS: Final = ("all", "instance", "none")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker or client can be configured with.

    Attributes:
        broker_url: ``amqp://...`` for RabbitMQ; ``None`` or ``memory://`` for the embedded
            in-process broker. Env ``WARREN_BROKER_URL``.
        database_url: ``postgresql+asyncpg://...`` or ``sqlite+aiosqlite:///path``.
            Env ``WARREN_DATABASE_URL``.
        namespace: Prefix of every exchange and queue. Env ``WARREN_NAMESPACE``.
        concurrency: Step bodies in flight per worker. Env ``WARREN_CONCURRENCY``.
        prefetch: Unacked messages per workflow queue. Env ``WARREN_PREFETCH``.
        turn_batch_size: Instances advanced per batched turn.
        turn_parallelism: Turn batches in flight at once per worker.
        lease_s: How long a turn may hold an instance's lease.
        heartbeat_timeout_s: A running step whose heartbeat is older is retried elsewhere.
            Env ``WARREN_HEARTBEAT_TIMEOUT``.
        wake_lead_s: A timer's wake-up is sent this long before it is due and held by the
            worker that receives it until then, so that the broker's delay lateness does not
            make it late (see ``engine._early_wake``).
        resume_cache_steps: Steps of history, in all, of the runs a worker keeps in memory
            between turns so that an instance continuing on it resumes instead of replaying
            (see ``engine._resume_cache``); 0 keeps none. Env ``WARREN_RESUME_CACHE_STEPS``.
        event_grace_s: How long an event for an instance not stored (yet) is held and
            tried again before it is dead-lettered: its create may still be on its way,
            on another worker (see ``engine._early_events``). Env ``WARREN_EVENT_GRACE``.
        sweep_interval_s: How often the sweeper looks for lost wake-ups.
            Env ``WARREN_SWEEP_INTERVAL``.
        sweep_grace_s: How overdue a wake-up must be before the sweeper re-issues it; it
            re-issues it again each time it is twice as overdue as at the last time.
        max_concurrency: Instances running at once across all workflows.
            Env ``WARREN_MAX_CONCURRENCY`` (default 50,000).
        retention_days: Finished instances (complete, errored, terminated) are deleted with
            their history this long after they ended. Env ``WARREN_RETENTION_DAYS``.
        workflow_max_concurrency: Per-workflow limits overriding each workflow's
            ``max_concurrency``. Env ``WARREN_WORKFLOW_MAX_CONCURRENCY="orders=10,emails=50"``.
        lifecycle_events: Which lifecycle events the process publishes: ``all``,
            ``instance`` (only ``instance.*``) or ``none`` (see
            ``engine._lifecycle.LifecycleEvents``). Env ``WARREN_LIFECYCLE_EVENTS``.
    """

    broker_url: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    namespace: str = "warren"
    concurrency: int = 100
    prefetch: int = 200
    turn_batch_size: int = 100
    turn_parallelism: int = 4
    lease_s: float = 30.0
    heartbeat_timeout_s: float = 30.0
    wake_lead_s: float = 1.0
    resume_cache_steps: int = 20_000
    event_grace_s: float = 10.0
    sweep_interval_s: float = 1.0
    sweep_grace_s: float = 1.0
    max_concurrency: int = 50_000
    retention_days: float = 30.0
    workflow_max_concurrency: Mapping[str, int] = field(default_factory=dict)
    lifecycle_events: str = "all"

    def __post_init__(self) -> None:
        check_lifecycle_level(self.lifecycle_events)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from the environment, with non-``None`` ``overrides`` applied on top."""
        env: dict[str, Any] = {
            "broker_url": os.environ.get("WARREN_BROKER_URL") or None,
            "database_url": os.environ.get("WARREN_DATABASE_URL") or DEFAULT_DATABASE_URL,
            "namespace": os.environ.get("WARREN_NAMESPACE") or "warren",
            "lifecycle_events": os.environ.get("WARREN_LIFECYCLE_EVENTS") or "all",
        }
        numeric = {
            "concurrency": ("WARREN_CONCURRENCY", int),
            "prefetch": ("WARREN_PREFETCH", int),
            "heartbeat_timeout_s": ("WARREN_HEARTBEAT_TIMEOUT", float),
            "event_grace_s": ("WARREN_EVENT_GRACE", float),
            "sweep_interval_s": ("WARREN_SWEEP_INTERVAL", float),
            "max_concurrency": ("WARREN_MAX_CONCURRENCY", int),
            "retention_days": ("WARREN_RETENTION_DAYS", float),
            "resume_cache_steps": ("WARREN_RESUME_CACHE_STEPS", int),
        }
        for name, (var, kind) in numeric.items():
            raw = os.environ.get(var)
            if raw:
                try:
                    env[name] = kind(raw)
                except ValueError:
                    raise ValidationError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
        per_workflow = os.environ.get("WARREN_WORKFLOW_MAX_CONCURRENCY")
        if per_workflow:
            env["workflow_max_concurrency"] = _parse_limits(per_workflow)
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValidationError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        env.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **env)


def _parse_limits(text: str) -> dict[str, int]:
    limits: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            limits[name.strip()] = int(value)
        except ValueError:
            raise ValidationError(
                f"WARREN_WORKFLOW_MAX_CONCURRENCY: expected name=number, got {part!r}") from None
    return limits


def check_lifecycle_level(level: str) -> str:
    """``level`` if it is one of :data:`LIFECYCLE_LEVELS`.

    Raises:
        ValidationError: It is not.
    """
    if level not in LIFECYCLE_LEVELS:
        raise ValidationError(
            f"lifecycle events (WARREN_LIFECYCLE_EVENTS) must be one of "
            f"{', '.join(LIFECYCLE_LEVELS)}; got {level!r}")
    return level
