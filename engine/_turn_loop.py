"""The turn loop: messages in, instances advanced, decisions committed, messages out.

Deliveries from the workflow queues are grouped into batches (whatever is waiting, up to
``batch_size``); each batch is one lease statement, one history load, a replay per
instance, one commit, pipelined publishes, then acks. A message is acked only after the
turn it triggered has committed (or after it was dead-lettered), so a crash at any point
means redelivery, and every decision is idempotent on (instance, step key, attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from sqlalchemy.exc import DataError, IntegrityError

from broker import (
    STORED_HEADER,
    Broker,
    Delivery,
    Envelope,
    EnvelopeError,
    OutgoingMessage,
    turn_message,
)
from broker._base import REROUTED_HEADER
from engine import _history as h
from engine._announced import AnnouncedInstance, announced_instance
from engine._clock import now_ms
from engine._codec import MAX_VALUE_BYTES, decode_message_json, encode_json, error_dict
from engine._early_events import EarlyEvents
from engine._early_wake import EarlyWakeups
from engine._history import AttemptResult
from engine._intake import Intake, Taken
from engine._lifecycle import LifecycleEvents
from engine._replay import InstanceRun, TurnOutcome
from engine._resume_cache import KeptRun, ResumeCache
from engine._runner import StepJob, StepRunner
from engine._store._database import Database
from engine._store._decided_turns import DecidedTurn, writable_alone, write_decided_turns
from engine._store._events import IncomingEvent, check_takes_events, store_events_txn
from engine._store._gates import SlotsContended, wants_slot
from engine._store._instances import NewInstance, create_from_message_txn, existing_ids
from engine._store._rows import dedup_key
from engine._store._schema import instances
from engine._store._turns import (
    Committed,
    Leased,
    acquire_txn,
    commit_txn,
    record_attempts_txn,
    release_leases_txn,
)
from sdk._config import check_event_type, check_instance_id
from sdk._workflow import WorkflowEntrypoint
from sdk.errors import (
    InstanceNotFoundError,
    InvalidTransitionError,
    LimitExceededError,
    ValidationError,
)

log = structlog.get_logger("warren.turn")

MAX_MESSAGE_BYTES = 2 * 1024 * 1024


@dataclass(slots=True)
class _Batch:
    workflow: str
    deliveries: list[Delivery] = field(default_factory=list)
    instance_ids: dict[str, None] = field(default_factory=dict)  # ordered set
    announced: dict[str, AnnouncedInstance] = field(default_factory=dict)
    rejected: list[Delivery] = field(default_factory=list)  # dead-lettered while decoding
    held: list[Delivery] = field(default_factory=list)  # events tried again later


@dataclass(slots=True)
class _Turn:
    """A committed batched turn of one workflow, and what it leaves to do."""

    workflow: str
    leased: Leased
    decided: list[tuple[h.InstanceSnapshot, TurnOutcome]]
    done: Committed

    @property
    def found(self) -> set[str]:
        """Ids that exist and are not finished (leased here or elsewhere)."""
        return {s.instance_id for s in self.leased.snapshots} | set(self.leased.busy)

    def add(self, other: _Turn) -> _Turn:
        """This turn with ``other`` (another part of it, same workflow) counted in."""
        self.leased.snapshots += other.leased.snapshots
        self.leased.busy += other.leased.busy
        self.leased.restarted += other.leased.restarted
        self.decided += other.decided
        self.done.add(other.done)
        return self


class TurnLoop:
    """Consumes deliveries for the served workflows and runs turns in batches."""

    def __init__(
        self, db: Database, broker: Broker, runner: StepRunner,
        workflows: dict[str, type[WorkflowEntrypoint]], *, worker_id: str,
        batch_size: int, lease_ms: int, parallelism: int, wake_lead_ms: int,
        resume_cache_steps: int, lifecycle_events: LifecycleEvents,
        event_grace_s: float = 0.0, max_early_events: int = 0,
    ) -> None:
        self._db = db
        self._broker = broker
        self._runner = runner
        self._workflows = workflows
        self._worker_id = worker_id
        self._lease_ms = lease_ms
        self._parallelism = parallelism
        # The broker's queue priority orders what is not yet delivered, this what already was.
        self._intake = Intake(batch_size=batch_size,
                              timers_due_soon=lambda: len(self._early) > 0)
        self._early = EarlyWakeups(broker, self._intake.put, lead_ms=wake_lead_ms)
        self._early_events = EarlyEvents(self._intake.put, grace_s=event_grace_s,
                                         max_held=max_early_events)
        self._kept = ResumeCache(resume_cache_steps)
        # Per workflow: whether turns may take slots without locking the gates (unknown: try).
        self._slots_open: dict[str, bool] = {}
        self._tokens = itertools.count(1)
        self._events = lifecycle_events
        self._lifecycle: list[OutgoingMessage] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._process_forever(), name=f"warren-turns-{i}")
                       for i in range(self._parallelism)]

    async def stop(self) -> None:
        """Stop taking turns; step results reported from now on are handed to other workers."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Held events are unacked: the broker gives them to another worker.
        await asyncio.gather(*(d.nack(requeue=True) for d in self._early_events.hand_back()),
                             return_exceptions=True)
        held = self._early.hand_back()
        if held:
            try:
                await self._broker.publish(held)
            except Exception:  # their timers are in SQL: the sweeper re-issues them
                log.exception("handing back held wake-ups failed", count=len(held))

    def handler(self, workflow: str) -> Any:
        async def on_delivery(delivery: Delivery) -> None:
            if not await self._early.hold(workflow, delivery):
                self._intake.put(workflow, delivery)
        return on_delivery

    async def _process_forever(self) -> None:
        while True:
            taken = await self._intake.take()
            try:
                await self._process_taken(taken)
            except Exception:  # settles what it can; this task must go on taking turns
                log.exception("turn task: unexpected failure; its messages come back when "
                              "their channel closes")
            finally:
                self._intake.done(taken)

    async def _process_taken(self, taken: Taken) -> None:
        batches: dict[str, _Batch] = {}
        for workflow, delivery in taken.items:
            batches.setdefault(workflow, _Batch(workflow)).deliveries.append(delivery)
        for batch in batches.values():
            await self._process_or_isolate(batch)

    async def _process_or_isolate(self, batch: _Batch) -> None:
        """Process ``batch``; if the database refuses one of its messages' data, find which.

        Requeued as a whole, a batch holding such a message would fail again at every
        redelivery, with every message taken beside it: the queue would be blocked. So its
        messages are processed again one at a time, and the one the database refuses alone
        is dead-lettered with the reason. Any other failure (the database unreachable, say)
        requeues the batch, to be retried.
        """
        try:
            await self._process(batch)
        except Exception as exc:
            unsettled = [d for d in batch.deliveries
                         if d not in batch.rejected and d not in batch.held]
            error = (str(exc).splitlines() or [repr(exc)])[0]
            if not _refused_data(exc):
                log.exception("turn batch failed; messages requeued", workflow=batch.workflow)
                await asyncio.gather(*(d.nack(requeue=True) for d in unsettled),
                                     return_exceptions=True)
                await asyncio.sleep(0.2)
            elif len(unsettled) > 1:
                log.warning("the database refused a batch's data; retrying its messages "
                            "one at a time", workflow=batch.workflow,
                            messages=len(unsettled), error=error)
                for delivery in unsettled:
                    await self._process_or_isolate(_Batch(batch.workflow, [delivery]))
            elif unsettled:
                try:
                    await _reject(unsettled[0], f"the database refused it: {error}")
                except Exception:  # the broker failed the dead-letter: redelivered later
                    log.exception("dead-lettering a refused message failed; requeued",
                                  workflow=batch.workflow)
                    await asyncio.gather(unsettled[0].nack(requeue=True),
                                         return_exceptions=True)

    async def _process(self, batch: _Batch) -> None:
        stored: list[Delivery] = []  # creates and events: their effect is already in SQL
        pokes: list[Delivery] = []
        # Creates whose publisher says it stored the instance: checked after the turn.
        claims: dict[Delivery, str] = {}
        incoming: list[tuple[Delivery, IncomingEvent]] = []
        for delivery in batch.deliveries:
            admitted = await self._admit(batch.workflow, delivery)
            if admitted is None:
                batch.rejected.append(delivery)
            elif isinstance(admitted, IncomingEvent):
                incoming.append((delivery, admitted))
            elif delivery.exchange == "internal":
                batch.instance_ids[str(admitted)] = None
                pokes.append(delivery)
            else:
                if isinstance(admitted, AnnouncedInstance):
                    instance_id = admitted.snapshot.instance_id
                    batch.announced[instance_id] = admitted
                else:
                    instance_id = admitted
                if delivery.headers.get(STORED_HEADER) == "1":
                    claims[delivery] = instance_id
                else:
                    stored.append(delivery)
                batch.instance_ids[instance_id] = None
        for delivery, instance_id in await self._store_events(batch, incoming):
            batch.instance_ids[instance_id] = None
            stored.append(delivery)
        try:
            found = (await self._turns(batch.workflow, list(batch.instance_ids),
                                       batch.announced)
                     if batch.instance_ids else set())
            stored += await self._reject_unstored(batch.workflow, claims, found)
        except Exception:
            log.exception("turn batch failed; retrying its instances", workflow=batch.workflow)
            # Redelivering a stored event would store it again (foreign publishers may set
            # no message id): ack what is stored and re-poke its instances a bit later. A
            # claimed create not checked yet comes back, to be checked.
            await self._broker.publish(_retry_later(batch.workflow, batch.instance_ids))
            await asyncio.gather(*(d.ack() for d in stored))
            await asyncio.gather(*(d.nack(requeue=True) for d in [*claims, *pokes]),
                                 return_exceptions=True)
            await asyncio.sleep(0.2)
            return
        await asyncio.gather(*(d.ack() for d in [*stored, *pokes]))

    async def _reject_unstored(
        self, workflow: str, claims: dict[Delivery, str], found: set[str]
    ) -> list[Delivery]:
        """Dead-letter create messages that claim a stored instance which does not exist;
        return the others."""
        unseen = {i for i in claims.values() if i not in found}
        if not unseen:
            return list(claims)
        async with self._db.reading() as conn:
            unseen -= await existing_ids(conn, workflow, unseen)
        for delivery, instance_id in claims.items():
            if instance_id in unseen:
                await _reject(delivery,
                              f"create message for {instance_id!r} says the instance was stored, "
                              "but there is no such instance (publish creates without that "
                              "header)")
        return [d for d, instance_id in claims.items() if instance_id not in unseen]

    async def _admit(
        self, workflow: str, delivery: Delivery
    ) -> str | AnnouncedInstance | IncomingEvent | None:
        """Decode a delivery into the instance it concerns (a create from Warren's client:
        into the instance it announces; an event: into the event, stored with the batch's
        others); dead-letter what is malformed."""
        try:
            if len(delivery.body) > MAX_MESSAGE_BYTES:
                raise ValidationError(
                    f"message is {len(delivery.body)} bytes; the limit is {MAX_MESSAGE_BYTES}"
                )
            if delivery.exchange == "internal":
                return Envelope.decode(delivery.body).instance_id
            if delivery.exchange == "create":
                return await self._create(workflow, delivery)
            if delivery.exchange == "events":
                return _incoming_event(workflow, delivery)
            raise ValidationError(f"unexpected message from exchange {delivery.exchange!r}")
        except (ValidationError, EnvelopeError, _Rejected) as exc:
            await _reject(delivery, str(exc))
            return None

    async def _create(self, workflow: str, delivery: Delivery) -> str | AnnouncedInstance:
        body = decode_message_json(delivery.body, what="create message")
        if not isinstance(body, dict) or not set(body) <= {"id", "params"}:
            raise ValidationError('create message must be a JSON object {"id"?, "params"?}')
        token = (dedup_key(delivery.message_id, instances.c.create_token)
                 or hashlib.sha256(delivery.body).hexdigest()[:32])
        # Only an absent id means "generate one": "" or 0 is a bad id, dead-lettered below.
        instance_id = _generated_id(token) if body.get("id") is None else body["id"]
        check_instance_id(instance_id)
        if delivery.headers.get(STORED_HEADER) == "1":
            # Warren's client inserted the row before publishing: nothing to store. That the
            # row really exists is checked after the turn (see _process).
            return (announced_instance(workflow, delivery, str(instance_id), body.get("params"))
                    or str(instance_id))
        params = encode_json(body.get("params"), what="params")
        async with self._db.transaction() as conn:
            result = await create_from_message_txn(
                conn, workflow, NewInstance(instance_id, params, token), now_ms()
            )
        if result == "duplicate":
            raise _Rejected(f"instance id {instance_id!r} already exists in {workflow!r}")
        if result == "created":
            self._lifecycle += self._events.messages(workflow, instance_id,
                                                     [("instance.queued", {})])
        return str(instance_id)

    async def _store_events(
        self, batch: _Batch, incoming: list[tuple[Delivery, IncomingEvent]]
    ) -> list[tuple[Delivery, str]]:
        """Store a batch's events in one transaction; dead-letter those no live instance
        takes, once an unknown instance has had ``event_grace_s`` to be created.

        Returns the stored ones with their instance ids.
        """
        if not incoming:
            return []
        workflow = batch.workflow
        async with self._db.transaction() as conn:
            statuses = await store_events_txn(conn, workflow, [e for _, e in incoming], now_ms())
        stored: list[tuple[Delivery, str]] = []
        for (delivery, event), status in zip(incoming, statuses, strict=True):
            if status is None and self._early_events.hold(workflow, delivery):
                batch.held.append(delivery)
                continue
            self._early_events.settled(delivery)
            try:
                check_takes_events(workflow, event.instance_id, status)
            except (InstanceNotFoundError, InvalidTransitionError) as refused:
                await _reject(delivery, str(refused))
                continue
            stored.append((delivery, event.instance_id))
        return stored

    async def _turns(
        self, workflow: str, instance_ids: list[str],
        announced: Mapping[str, AnnouncedInstance],
    ) -> set[str]:
        """Run turns of the instances; return the ids that exist and are not finished."""
        turn = await self._decide_and_commit(workflow, instance_ids, (), announced)
        await self._act(turn)
        return turn.found

    async def apply_results(
        self, results: Sequence[tuple[StepJob, AttemptResult]]
    ) -> list[tuple[StepJob, AttemptResult]]:
        """Store ended step attempts and run the turns that apply them, here and now.

        Each workflow's results are stored in the transaction of the turn that applies
        them, so a step's next turn follows it on this worker without a broker round trip.
        Returns the results that could not be stored (the caller keeps them). Once stored,
        a turn whose messages fail is retried through the broker.
        """
        wanted: dict[str, dict[str, None]] = {}
        ended: dict[str, list[tuple[StepJob, AttemptResult]]] = {}
        for job, result in results:
            wanted.setdefault(job.workflow, {})[job.instance_id] = None
            ended.setdefault(job.workflow, []).append((job, result))
        if self._stopping:  # hand the turns to the other workers
            async with self._db.transaction() as conn:
                await record_attempts_txn(conn, [result for _, result in results])
            await self._broker.publish([turn_message(workflow, "step", iid)
                                        for workflow, ids in wanted.items() for iid in ids])
            return []
        unstored: list[tuple[StepJob, AttemptResult]] = []
        for workflow, ids in wanted.items():
            try:
                turn = await self._decide_and_commit(
                    workflow, list(ids), [result for _, result in ended[workflow]])
            except Exception:
                log.exception("storing step results failed; they are kept and retried",
                              workflow=workflow)
                unstored += ended[workflow]
                continue
            try:
                await self._act(turn)
            except Exception:
                log.exception("turn after step results failed; retrying its instances",
                              workflow=workflow)
                with contextlib.suppress(Exception):
                    await self._broker.publish(_retry_later(workflow, ids))
        return unstored

    def _new_owner(self) -> str:
        """A lease owner token: this worker, and which acquisition (fencing)."""
        return f"{self._worker_id}:{next(self._tokens)}"

    async def _decide_and_commit(
        self, workflow: str, instance_ids: list[str], results: Sequence[AttemptResult],
        announced: Mapping[str, AnnouncedInstance] | None = None,
    ) -> _Turn:
        """Run the turns of ``instance_ids`` that store and apply ``results``.

        On PostgreSQL, when every one of these turns can be decided before reading the
        store (a kept run applies its step results, or a new instance's create message
        ``announced`` its row) and written alone, the batch is one statement (see
        ``engine._store._decided_turns``); whatever it does not take, or any other batch,
        takes the general turn.
        """
        kept = self._kept.take(workflow, instance_ids)
        announced = announced or {}
        ended = {r.instance_pk for r in results}
        decidable = {*announced, *(k.run.instance.instance_id for pk, k in kept.items()
                                   if pk in ended)}
        if self._db.dialect != "postgresql" or not decidable >= set(instance_ids):
            # Some turn needs the store read first: the batch takes the general turn.
            return await self._general_turn(workflow, instance_ids, results, kept)
        quick, ahead, kept = await self._decide_ahead(workflow, instance_ids, kept, results,
                                                      announced)
        written = quick.done.held
        taken = {s.instance_id for s in quick.leased.snapshots}
        rest = [i for i in instance_ids if i not in taken]
        if not rest:
            return quick
        return quick.add(await self._general_turn(
            workflow, rest, [r for r in results if r.instance_pk not in written], kept, ahead))

    async def _decide_ahead(
        self, workflow: str, instance_ids: list[str], kept: dict[int, KeptRun],
        results: Sequence[AttemptResult], announced: Mapping[str, AnnouncedInstance],
    ) -> tuple[_Turn, dict[int, TurnOutcome], dict[int, KeptRun]]:
        """Decide the turns of the kept runs that ``results`` concern and the first turns of
        the ``announced`` instances (together, all of ``instance_ids``); if each can be
        written alone, write them in one statement, unless their instances changed
        meanwhile. (If some need the general turn, all take it: a second commit per batch
        would cost more than the statements it saves, 10 % of steps/s in ``throughput``.)

        Returns that turn, the outcomes decided for the kept runs not written (moved on,
        they cannot resume again: their general turn takes the outcome if the instance is
        still as the run saw it, else it replays), and the runs not resumed, still kept.
        First turns not written are simply replayed by the general turn (no history yet).
        """
        now = now_ms()
        ended = _by_instance(results)
        decided: list[DecidedTurn] = []
        runs: dict[int, InstanceRun] = {}
        resumed: dict[int, KeptRun] = {}
        for pk in [pk for pk in kept if pk in ended]:
            taken = kept.pop(pk)
            run = taken.run
            # The instance as this run's last turn left it, leased at the next fence (it
            # runs, so it has started: the row knows when).
            snapshot = replace(run.instance, fence=taken.fence, status=h.STATUS_RUNNING,
                               slot=True, control=None, paused=False, admit_priority=None,
                               started_at_ms=run.instance.started_at_ms or now,
                               steps=[], events=[])
            try:
                outcome = run.resume(snapshot, now, ended[pk])
            except Exception:  # as in _replay; the general turn replays it from its history
                log.exception("resume crashed", workflow=workflow,
                              instance=snapshot.instance_id)
                continue
            runs[pk], resumed[pk] = run, taken
            decided.append(DecidedTurn(snapshot, outcome))
        for new in announced.values():
            run = InstanceRun(self._workflows[workflow], new.snapshot, now)
            try:
                outcome = run.run()
            except Exception:  # as in _replay: the general turn errors the instance
                continue
            runs[new.snapshot.pk] = run
            decided.append(DecidedTurn(new.snapshot, outcome, stored=new.stored))
        written = await self._write_decided(workflow, instance_ids, decided, now)
        ahead = {d.snapshot.pk: d.outcome for d in decided
                 if d.snapshot.pk not in written and d.stored is None}
        taken_turns = [(d.snapshot, d.outcome) for d in decided if d.snapshot.pk in written]
        done = Committed(held=written)
        self._keep(workflow, taken_turns, runs, done)
        kept.update((pk, resumed[pk]) for pk in ahead)
        return (_Turn(workflow, Leased([s for s, _ in taken_turns], []), taken_turns, done),
                ahead, kept)

    async def _write_decided(
        self, workflow: str, instance_ids: list[str], decided: list[DecidedTurn], now: int
    ) -> set[int]:
        """Write ``decided`` in one statement if it is all of ``instance_ids``' turns and
        each can be written alone; return the pks written."""
        if ({d.snapshot.instance_id for d in decided} != set(instance_ids)
                or not all(writable_alone(d.outcome) for d in decided)):
            return set()
        moves_slots = any(d.snapshot.slot != wants_slot(d.outcome.status) for d in decided)
        if moves_slots and not self._slots_open.get(workflow, True):
            return set()  # slots are settled under the gates' locks for now
        try:
            async with self._db.driver() as conn:
                return await write_decided_turns(conn, workflow, decided, self._worker_id, now)
        except SlotsContended:
            self._slots_open[workflow] = False
        except ValidationError:  # an outcome over its limit: the general turn errors it
            pass
        return set()

    async def _general_turn(
        self, workflow: str, instance_ids: list[str], results: Sequence[AttemptResult],
        kept: dict[int, KeptRun], ahead: Mapping[int, TurnOutcome] | None = None,
    ) -> _Turn:
        """Lock, store ``results``, load, replay (or resume) and commit, in one transaction.

        Holding the instance rows for the whole turn costs a concurrent turn of the same
        instance a short wait, and saves a second transaction and the writes of a lease
        (taken, then released) per turn. If an outcome cannot be stored (a value over its
        limit), the turn is taken apart: lease first, then commit instance by instance.
        """
        owner = self._new_owner()
        now = now_ms()
        ahead = ahead or {}
        optimistic = self._slots_open.get(workflow, True)
        try:
            async with self._db.transaction() as conn:
                leased = await acquire_txn(
                    conn, workflow, instance_ids, owner, now, self._lease_ms, results=results,
                    known_fences={pk: k.fence for pk, k in kept.items()}, lease=False,
                    decided_ahead=set(ahead))
                decided, runs = self._replay(workflow, leased, now, kept, results, ahead)
                done = (await commit_txn(conn, owner, decided, self._worker_id, now,
                                         locked_in_this_transaction=True,
                                         optimistic_slots=optimistic)
                        if decided else Committed())
            if done.slots_open is not None:
                self._slots_open[workflow] = done.slots_open
            self._keep(workflow, decided, runs, done)
            return _Turn(workflow, leased, decided, done)
        except SlotsContended:
            # Rolled back: redo the whole turn, settling slots under the gates' locks (the
            # runs taken were advanced by the attempt: the redo replays them).
            self._slots_open[workflow] = False
            return await self._general_turn(workflow, instance_ids, results, {})
        except ValidationError:
            log.warning("a turn outcome cannot be stored; committing instance by instance",
                        workflow=workflow)
        owner = self._new_owner()
        try:
            async with self._db.transaction() as conn:
                leased = await acquire_txn(conn, workflow, instance_ids, owner, now,
                                           self._lease_ms, results=results)
            decided, _ = self._replay(workflow, leased, now)
            done = await self._commit(owner, decided, now) if decided else Committed()
        except BaseException:
            await self._release(owner)
            raise
        return _Turn(workflow, leased, decided, done)

    def _keep(
        self, workflow: str, decided: list[tuple[h.InstanceSnapshot, TurnOutcome]],
        runs: dict[int, InstanceRun], done: Committed,
    ) -> None:
        """Keep the runs whose next turn is likely here (their steps run here) and may
        resume them: the history they hold is the one just committed."""
        for snapshot, _ in decided:
            run = runs.get(snapshot.pk)
            if (run is not None and run.resumable and snapshot.pk in done.held
                    and snapshot.pk not in done.denied):
                # The next lease increments the fence, unless someone else's comes first.
                self._kept.keep(workflow, snapshot.instance_id,
                                KeptRun(snapshot.pk, snapshot.fence + 1, run))

    async def _release(self, owner: str) -> None:
        """Don't leave a failed batch's leases to expire (30 s of nothing) on the way out."""
        with contextlib.suppress(Exception):
            async with self._db.transaction() as conn:
                await release_leases_txn(conn, owner)

    def _replay(
        self, workflow: str, leased: Leased, now: int,
        kept: Mapping[int, KeptRun] | None = None, results: Sequence[AttemptResult] = (),
        ahead: Mapping[int, TurnOutcome] | None = None,
    ) -> tuple[list[tuple[h.InstanceSnapshot, TurnOutcome]], dict[int, InstanceRun]]:
        """Decide each leased instance's turn (no I/O): resume the kept runs whose history
        was not loaded (``leased.resumable``), or take the outcome they decided ahead of
        the lock, and replay the others. Returns the decisions and the runs that made
        them."""
        cls = self._workflows[workflow]
        ended = _by_instance(results)
        decided: list[tuple[h.InstanceSnapshot, TurnOutcome]] = []
        runs: dict[int, InstanceRun] = {}
        for snapshot in leased.snapshots:
            control = snapshot.control or {}
            if control.get("op") == "terminate" and not control.get("rollback"):
                decided.append((snapshot, TurnOutcome(status=h.TERMINATED)))
                continue
            try:
                if snapshot.pk in leased.resumable:
                    run = (kept or {})[snapshot.pk].run
                    decided_ahead = (ahead or {}).get(snapshot.pk)
                    outcome = (decided_ahead if decided_ahead is not None
                               else run.resume(snapshot, now, ended.get(snapshot.pk, ())))
                else:
                    run = InstanceRun(cls, snapshot, now)
                    outcome = run.run()
                runs[snapshot.pk] = run
            except Exception as exc:  # a bug in the engine must not wedge the instance
                log.exception("replay crashed", workflow=workflow, instance=snapshot.instance_id)
                outcome = TurnOutcome(status="errored", error=error_dict(exc))
            decided.append((snapshot, outcome))
        return decided, runs

    async def _act(self, turn: _Turn) -> None:
        """After the commit: start the steps the turn decided and publish its messages."""
        workflow, done = turn.workflow, turn.done
        messages, self._lifecycle = self._lifecycle, []
        for snap in turn.leased.restarted:
            messages += self._events.messages(workflow, snap.instance_id,
                                              [("instance.restarted", {})])
        messages += [turn_message(wf, "wake", iid) for wf, iid in done.admitted]
        for snapshot, outcome in turn.decided:
            if snapshot.pk in done.again:
                messages.append(turn_message(workflow, "wake", snapshot.instance_id))
            if snapshot.pk not in done.held or snapshot.pk in done.denied:
                continue
            iid = snapshot.instance_id
            messages += self._events.messages(workflow, iid, [
                *outcome.step_events, *_instance_events(snapshot.status, outcome),
                *(("progress", {"data": data}) for data in outcome.progress)])
            log.debug("turn", workflow=workflow, instance=snapshot.instance_id,
                      status=outcome.status, started=len(outcome.attempts))
            for due_ms in outcome.timers_set.values():
                messages.append(self._early.message(workflow, snapshot.instance_id, due_ms))
            for attempt in outcome.attempts:
                self._runner.submit(StepJob(workflow, snapshot.instance_id, snapshot.pk, attempt))
        if messages:
            await self._broker.publish(messages)

    async def _commit(
        self, owner: str, results: list[tuple[Any, TurnOutcome]], now: int
    ) -> Committed:
        """Commit a batch in one transaction; if that fails, one instance at a time, so one
        instance whose outcome cannot be stored does not hold back the others."""
        try:
            async with self._db.transaction() as conn:
                return await commit_txn(conn, owner, results, self._worker_id, now)
        except ValidationError:
            if len(results) == 1:
                return await self._commit_unstorable(owner, results[0], now)
            log.exception("batch commit failed; committing its instances one by one")
        done = Committed()
        for result in results:
            try:
                async with self._db.transaction() as conn:
                    part = await commit_txn(conn, owner, [result], self._worker_id, now)
            except ValidationError:
                part = await self._commit_unstorable(owner, result, now)
            done.add(part)
        return done

    async def _commit_unstorable(
        self, owner: str, result: tuple[Any, TurnOutcome], now: int
    ) -> Committed:
        """An outcome the store refuses (e.g. an output over its limit) errors the instance."""
        snapshot = result[0]
        log.exception("turn outcome cannot be stored; the instance fails",
                      instance=snapshot.instance_id)
        failed = TurnOutcome(status=h.ERRORED, error={
            "name": "EngineError",
            "message": "the outcome of a turn could not be stored (a value over its limit?)",
        })
        async with self._db.transaction() as conn:
            return await commit_txn(conn, owner, [(snapshot, failed)], self._worker_id, now)


def unroutable_handler(
    broker: Broker, served: Iterable[str]
) -> Callable[[Delivery], Awaitable[None]]:
    """What a worker does with a create/event message that no workflow queue took: one for
    a workflow it serves was published before any worker declared that workflow's queue,
    which exists now, so it is published there again; any other is dead-lettered, saying
    why."""
    serving = frozenset(served)

    async def handle(delivery: Delivery) -> None:
        # A create's key is the workflow's name (a direct binding); an event's starts with it.
        workflow = (delivery.routing_key if delivery.exchange == "create"
                    else delivery.routing_key.split(".", 1)[0])
        # Once only: a copy that came back unroutable would otherwise go round for ever.
        if workflow in serving and delivery.exchange in ("create", "events") \
                and REROUTED_HEADER not in delivery.headers:
            await broker.publish([OutgoingMessage(
                delivery.exchange, delivery.routing_key, delivery.body,
                message_id=delivery.message_id,
                headers={**delivery.headers, REROUTED_HEADER: "1"})])
            await delivery.ack()
            return
        await _reject(delivery, f"no workflow named {workflow!r} is served (unroutable "
                                f"{delivery.exchange} message; start a worker for it before "
                                "publishing)")

    return handle


def _refused_data(exc: BaseException) -> bool:
    """Whether the database refused a statement's data, so that the same message can only
    fail the same way again: SQLSTATE class 22 (data exception), 23 (integrity constraint)
    or 54 (program limit, e.g. an index entry too large)."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    state = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(state, str) and state[:2] in ("22", "23", "54")


async def _reject(delivery: Delivery, reason: str) -> None:
    """Dead-letter a message the engine does not accept, with the reason, and log it."""
    log.warning("message rejected", exchange=delivery.exchange,
                routing_key=delivery.routing_key, reason=reason)
    await delivery.dead_letter(reason)


def _generated_id(token: str) -> str:
    """The id of a create sent without one: its de-duplication token (the message id, or
    the body's hash) when that is a valid id, else the token's hash, since a message id
    may hold any characters."""
    try:
        return check_instance_id(token)
    except ValidationError:
        return hashlib.sha256(token.encode()).hexdigest()[:32]


def _incoming_event(workflow: str, delivery: Delivery) -> IncomingEvent:
    """The event a delivery carries, checked (it is stored later, with its batch).

    Raises:
        ValidationError: The routing key, event type or payload is not acceptable.
    """
    parts = delivery.routing_key.split(".")
    if len(parts) != 3 or parts[0] != workflow:
        raise ValidationError(
            "event routing key must be <workflow>.<instance_id>.<event_type>, "
            f"got {delivery.routing_key!r}")
    _, instance_id, event_type = parts
    check_instance_id(instance_id)
    check_event_type(event_type)
    if len(delivery.body) > MAX_VALUE_BYTES:
        raise LimitExceededError(
            f"event payload is {len(delivery.body)} bytes; the limit is {MAX_VALUE_BYTES}")
    decode_message_json(delivery.body, what="event payload")
    return IncomingEvent(instance_id, event_type, delivery.body.decode(), delivery.message_id)


def _by_instance(results: Sequence[AttemptResult]) -> dict[int, list[AttemptResult]]:
    """Ended attempts grouped by instance pk, in their order."""
    ended: dict[int, list[AttemptResult]] = {}
    for result in results:
        ended.setdefault(result.instance_pk, []).append(result)
    return ended


def _retry_later(workflow: str, instance_ids: Iterable[str]) -> list[OutgoingMessage]:
    """Wake-ups for instances whose turn failed, after a pause (the store may be down)."""
    return [turn_message(workflow, "wake", iid, delay_ms=500) for iid in instance_ids]


class _Rejected(Exception):
    """A well-formed message that cannot be accepted (duplicate id, unknown instance, …)."""


_STATUS_EVENTS = {
    h.STATUS_WAITING: "instance.waiting", h.PAUSED: "instance.paused",
    h.COMPLETE: "instance.complete", h.ERRORED: "instance.errored",
    h.TERMINATED: "instance.terminated",
}


def _instance_events(before: str, outcome: TurnOutcome) -> list[tuple[str, dict[str, Any]]]:
    after = outcome.status
    found: list[tuple[str, dict[str, Any]]] = []
    if before == h.QUEUED and after != h.QUEUED:
        found.append(("instance.started", {}))
    if before in (h.PAUSED, h.WAITING_FOR_PAUSE) and after not in (h.PAUSED, h.WAITING_FOR_PAUSE):
        found.append(("instance.resumed", {}))
    if after != before and after in _STATUS_EVENTS:
        details: dict[str, Any] = {"status": after}
        if after == h.COMPLETE:
            details["output"] = outcome.output
        if after == h.ERRORED:
            details["error"] = outcome.error
        found.append((_STATUS_EVENTS[after], details))
    return found
