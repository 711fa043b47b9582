"""Tables of the store (sqlmodel). Times are integer milliseconds since the epoch (``_ms``).

JSON values (params, outputs, errors, configs) are stored as text written by orjson, so the
same bytes round-trip on PostgreSQL and SQLite. ``SCHEMA_VERSION`` is recorded in
``warren_meta`` so later releases can migrate instead of guessing.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Text, text
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 5


def _room_for_updates() -> dict[str, dict[str, int]]:
    """Table options that leave 30 % of each page free on PostgreSQL.

    Turns rewrite instance rows several times each. With room left on the page,
    PostgreSQL writes the new version beside the old one and skips every index when no
    indexed column changed (a HOT update); on a full page each rewrite is an insert into
    each of the table's indexes. 30 % free made 45 % of the instance updates and 55 % of
    the attempt updates HOT in ``throughput`` (from 15 % and 8 %) and took 10 % off
    PostgreSQL's CPU per step. Step rows are left full: ending a step changes ``state``,
    which the running-step index names, so their updates cannot be HOT. Attempt rows,
    since schema 5, are written once (only failed attempts, when their failure is applied).
    """
    return {"postgresql_with": {"fillfactor": 70}}


def _serial_pk() -> Column[int]:
    # BIGSERIAL on PostgreSQL; SQLite autoincrements only a column typed exactly INTEGER.
    return Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                  autoincrement=True)


class GateRow(SQLModel, table=True):
    """Concurrency slots of one workflow, or of all of them (``workflow = '*'``).

    ``running`` counts instances holding a slot, ``queued`` those in the admission queue;
    both change in the same transactions as the instances' ``slot`` / ``admit_priority``,
    and the sweeper reconciles them from the instances as a safety net.
    """

    __tablename__ = "warren_gates"
    workflow: str = Field(primary_key=True, max_length=64)
    max_running: int | None = None
    running: int = 0
    queued: int = 0
    rate: float | None = None
    tokens: float = 0.0
    tokens_at_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class WarrenMeta(SQLModel, table=True):
    """Key/value facts about the schema itself (its version)."""

    __tablename__ = "warren_meta"
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=256)


class WorkflowRow(SQLModel, table=True):
    """A workflow that some worker has served."""

    __tablename__ = "warren_workflows"
    name: str = Field(primary_key=True, max_length=64)
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class InstanceRow(SQLModel, table=True):
    """One workflow instance: its params, outcome, status and turn lease.

    The lease (``lease_owner``, ``lease_expires_ms``) plus ``fence`` serialize turns: taking
    the lease increments ``fence``, and every write of a turn is guarded by it.
    ``needs_turn`` records that a message arrived while another worker held the lease.
    """

    __tablename__ = "warren_instances"
    # A turn that changes the status writes an entry into every index below: each one is
    # here for a query that needs it (tests/integration/test_store_layout.py lists them).
    __table_args__ = (
        Index("ux_instances_workflow_id", "workflow", "instance_id", unique=True),
        Index("ix_instances_list", "workflow", "pk"),
        Index("ix_instances_list_status", "workflow", "status", "pk"),
        Index(
            "ix_instances_ended", "ended_at_ms",
            postgresql_where=text("ended_at_ms IS NOT NULL"),
            sqlite_where=text("ended_at_ms IS NOT NULL"),
        ),
        Index(
            "ix_instances_slot", "workflow",
            postgresql_where=text("slot"), sqlite_where=text("slot"),
        ),
        Index(
            "ix_instances_unturned", "created_at_ms",
            postgresql_where=text("status = 'queued' AND admit_priority IS NULL"),
            sqlite_where=text("status = 'queued' AND admit_priority IS NULL"),
        ),
        Index(
            "ix_instances_admission",
            "workflow", "admit_priority", "admit_seq",
            postgresql_where=text("admit_priority IS NOT NULL"),
            sqlite_where=text("admit_priority IS NOT NULL"),
        ),
        Index(
            "ix_instances_lease",
            "lease_expires_ms",
            postgresql_where=text("lease_owner IS NOT NULL"),
            sqlite_where=text("lease_owner IS NOT NULL"),
        ),
        _room_for_updates(),
    )
    pk: int | None = Field(default=None, sa_column=_serial_pk())
    workflow: str = Field(max_length=64)
    instance_id: str = Field(max_length=100)
    status: str = Field(max_length=20)
    params: str = Field(sa_column=Column(Text, nullable=False))
    output: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    create_token: str = Field(max_length=64)
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    started_at_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    ended_at_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    fence: int = Field(default=0)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    needs_turn: bool = Field(default=False)
    paused: bool = Field(default=False)
    control: str | None = Field(default=None, sa_column=Column(Text))
    rollback: str | None = Field(default=None, sa_column=Column(Text))
    slot: bool = Field(default=False)
    admit_priority: int | None = Field(default=None)
    admit_seq: int | None = Field(default=None, sa_column=Column(BigInteger))


class StepRow(SQLModel, table=True):
    """One step of an instance's history, keyed by name and occurrence (``name#count``).

    ``start_seq`` orders steps by when they were started (rollbacks run in reverse of it);
    ``completed_seq`` orders outcomes as ``run()`` observed them, which replay reproduces.
    ``attempt_outcome`` is an ended attempt's result that no turn has applied yet.
    """

    __tablename__ = "warren_steps"
    __table_args__ = (
        Index(
            "ix_steps_running_heartbeat",
            "heartbeat_at_ms",
            postgresql_where=text("state = 'running'"),
            sqlite_where=text("state = 'running'"),
        ),
    )
    instance_pk: int = Field(sa_column=Column(BigInteger, primary_key=True))
    step_key: str = Field(sa_column=Column(String(400), primary_key=True))
    name: str = Field(max_length=256)
    count: int
    kind: str = Field(max_length=20)
    start_seq: int
    completed_seq: int | None = None
    state: str = Field(max_length=20)
    attempt: int = Field(default=0)
    attempt_outcome: str | None = Field(default=None, max_length=10)
    output: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    config: str = Field(sa_column=Column(Text, nullable=False))
    wake_at_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    heartbeat_at_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    worker: str | None = Field(default=None, max_length=128)
    attempt_token: str | None = Field(default=None, max_length=32)
    started_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    ended_at_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    attempt_started_at_ms: int | None = Field(default=None, sa_column=Column(BigInteger))


class EventRow(SQLModel, table=True):
    """An event sent to an instance; ``consumed_by`` is the wait step that took it.

    ``message_id`` de-duplicates redelivered and re-sent messages (unique per instance).
    """

    __tablename__ = "warren_events"
    __table_args__ = (
        Index("ux_events_message", "instance_pk", "message_id", unique=True),
        Index("ix_events_pending", "instance_pk", "consumed_by", "pk"),
    )
    pk: int | None = Field(default=None, sa_column=_serial_pk())
    instance_pk: int = Field(sa_column=Column(BigInteger, nullable=False))
    event_type: str = Field(max_length=100)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    message_id: str | None = Field(default=None, max_length=200)
    received_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    consumed_by: str | None = Field(default=None, sa_column=Column(String(400)))


class StepAttemptRow(SQLModel, table=True):
    """An attempt of a ``do`` or rollback step that failed (the status JSON lists them).

    A step's latest attempt is described by its own row (``attempt``,
    ``attempt_started_at_ms``, ``attempt_outcome``, ``ended_at_ms``): an attempt that
    succeeds at once writes nothing here, which spared PostgreSQL an insert and an update
    per step (``benchmarks/README.md``, change 34). The turn that applies a failure writes
    its row.
    """

    __tablename__ = "warren_step_attempts"
    instance_pk: int = Field(sa_column=Column(BigInteger, primary_key=True))
    step_key: str = Field(sa_column=Column(String(400), primary_key=True))
    attempt: int = Field(primary_key=True)
    started_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    ended_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text))


class TimerRow(SQLModel, table=True):
    """A pending wake-up (sleep, retry backoff, wait timeout): the truth behind a delayed message.

    ``due_at_ms`` is when the sweeper should next republish the wake-up if no turn has
    consumed the timer; the step row keeps the real wake time.
    """

    __tablename__ = "warren_timers"
    __table_args__ = (Index("ix_timers_due", "due_at_ms"),)
    instance_pk: int = Field(sa_column=Column(BigInteger, primary_key=True))
    step_key: str = Field(sa_column=Column(String(400), primary_key=True))
    due_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class EngineLeaseRow(SQLModel, table=True):
    """A named lease among workers (the sweeper runs on one worker at a time)."""

    __tablename__ = "warren_engine_leases"
    name: str = Field(primary_key=True, max_length=64)
    owner: str | None = Field(default=None, max_length=128)
    expires_at_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


instances = InstanceRow.__table__  # type: ignore[attr-defined]
steps = StepRow.__table__  # type: ignore[attr-defined]
step_attempts = StepAttemptRow.__table__  # type: ignore[attr-defined]
timers = TimerRow.__table__  # type: ignore[attr-defined]
workflows = WorkflowRow.__table__  # type: ignore[attr-defined]
events = EventRow.__table__  # type: ignore[attr-defined]
engine_leases = EngineLeaseRow.__table__  # type: ignore[attr-defined]
gates = GateRow.__table__  # type: ignore[attr-defined]
meta = WarrenMeta.__table__  # type: ignore[attr-defined]
