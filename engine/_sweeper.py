"""The sweeper: the at-least-once backstop for every wake-up, run by one worker at a time.

SQL holds the truth (timers, heartbeats, leases); messages are only reminders. A reminder
lost anywhere — a delayed message dropped while dead-lettering between delay levels, a
worker killed before publishing, a crashed turn — is re-issued from SQL here, so a lost
message delays an instance but never strands it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Collection

import structlog

from broker import Broker, turn_message
from engine._clock import now_ms
from engine._store import _sweeps as q
from engine._store._database import Database
from engine._store._gates import admit_all_txn, all_gate_counts, reconcile_txn

log = structlog.get_logger("warren.sweeper")

_BATCH = 1000
_RECONCILE_EVERY = 10  # sweeps between recounts of the gates (a safety net, not the path)
_UNSTARTED_GRACE_MS = 60_000  # a create message not turned after this long was lost
_UNSTARTED_BATCH = 200
# Not turned after this long, with nothing waiting in its workflow's queue: its create
# message is gone (the broker restarted and dropped it, or the client died before sending it).
LOST_CREATE_GRACE_MS = 10_000
# A lost create's re-issued wake-up may sit unsettled in a busy worker, where the queue's
# count does not see it: it is not re-issued again for this long.
_LOST_REISSUE_QUIET_MS = 60_000


class Sweeper:
    """Periodically re-issues overdue wake-ups; coordinated through an engine lease row."""

    def __init__(
        self, db: Database, broker: Broker, *, worker_id: str, served: Collection[str],
        interval_s: float, grace_ms: int, heartbeat_timeout_ms: int, retention_ms: int,
        lost_create_grace_ms: int = LOST_CREATE_GRACE_MS,
    ) -> None:
        self._db = db
        self._broker = broker
        self._worker_id = worker_id
        self._served = sorted(set(served))
        # One sweeper per group of workers serving the same workflows: a worker can only
        # wake instances of workflows it serves, so each group repairs its own.
        digest = hashlib.sha256(",".join(self._served).encode()).hexdigest()[:16]
        self._lease_name = f"sweeper:{digest}"
        self._interval_s = interval_s
        self._grace_ms = grace_ms
        self._heartbeat_timeout_ms = heartbeat_timeout_ms
        self._retention_ms = retention_ms
        self._lost_create_grace_ms = lost_create_grace_ms
        self._task: asyncio.Task[None] | None = None
        self._sweeps = 0
        # Lost creates found by the last sweep, and those re-issued (when): see _lost_creates.
        self._lost_seen: set[q.Poke] = set()
        self._lost_reissued: dict[q.Poke, int] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="warren-sweeper")

    async def stop(self) -> None:
        """Stop sweeping and hand the sweeper lease over (another worker sweeps at once)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with self._db.transaction() as conn:
                await q.release_lease_txn(conn, self._lease_name, self._worker_id)
        except Exception as exc:  # the lease then simply expires
            log.warning("could not release the sweeper lease", error=repr(exc))

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(self._interval_s)

    async def sweep_once(self) -> int:
        """Run one sweep if this worker holds the sweeper lease; return the wake-ups sent."""
        now = now_ms()
        ttl_ms = int(self._interval_s * 3000)
        async with self._db.transaction() as conn:
            if not await q.take_lease_txn(conn, self._lease_name, self._worker_id, now, ttl_ms):
                return 0
            served = self._served
            repairs = await q.overdue_timers_txn(conn, served, now, self._grace_ms, _BATCH)
            repairs += await q.stale_steps_txn(conn, served, now, self._heartbeat_timeout_ms,
                                               _BATCH)
            # Published before the commit: if the broker refuses, the timers and heartbeats
            # are not pushed back, and the next sweep tries again at once.
            await self._publish(repairs)
        self._sweeps += 1
        async with self._db.transaction() as conn:
            if self._sweeps % _RECONCILE_EVERY == 0:
                expired = await q.expire_finished_txn(conn, served, now - self._retention_ms,
                                                      _BATCH)
                if expired:
                    log.info("retention deleted finished instances", count=expired)
                await reconcile_txn(conn)
                for counts in await all_gate_counts(conn):
                    log.info("gate", **counts)
            # Slots that free up with time (creation rate tokens) or after repairs.
            pokes = await admit_all_txn(conn, served, now)
        async with self._db.reading() as conn:
            pokes += await q.expired_leases(conn, served, now, _BATCH)
            if self._sweeps % _RECONCILE_EVERY == 1:
                # Rare and small on purpose: in a burst, creates wait in the queue for a
                # while, and re-poking them every sweep would pile up duplicates.
                pokes += await q.unstarted_instances(conn, served, now, _UNSTARTED_GRACE_MS,
                                                     _UNSTARTED_BATCH)
                pokes += await q.idle_slot_holders(conn, served, _BATCH)
        await self._publish(pokes)
        # After the others are out, so that a broker error here costs none of them; marked
        # re-issued only once sent, so a refused re-issue is retried at the next sweep.
        lost = await self._lost_creates(now)
        await self._publish(lost)
        self._lost_reissued.update(dict.fromkeys(lost, now))
        return len(q.unique([*repairs, *pokes, *lost]))

    async def _lost_creates(self, now: int) -> list[q.Poke]:
        """Queued instances whose create message is gone: no turn has started them after
        the grace, and their workflow's queue held no message at this sweep and the last.

        Warren's client sends create messages transient (SQL holds the instance), so a
        broker restart drops every create still queued; this finds them within seconds, up
        to a thousand per sweep. A queue that holds messages may still hold those creates (a
        burst the workers are working through): re-poking them would double the backlog, so
        there only the rare, small re-poke of ``unstarted_instances`` above applies. A create
        a worker holds unsettled is not in the queue's count either, but it is turned well
        within a sweep interval, so only what two sweeps in a row found is re-issued.
        """
        self._lost_reissued = {p: at for p, at in self._lost_reissued.items()
                               if at > now - _LOST_REISSUE_QUIET_MS}
        drained: list[str] = []
        for workflow in self._served:
            try:
                if await self._broker.queue_depth(workflow) == 0:
                    drained.append(workflow)
            except Exception as exc:  # this workflow's lost creates wait for a later sweep
                log.warning("could not count the queue", workflow=workflow, error=repr(exc))
        found: list[q.Poke] = []
        if drained:
            async with self._db.reading() as conn:
                found = await q.unstarted_instances(conn, drained, now,
                                                    self._lost_create_grace_ms, _BATCH)
        seen, self._lost_seen = self._lost_seen, set(found)
        return [p for p in found if p in seen and p not in self._lost_reissued]

    async def _publish(self, pokes: list[q.Poke]) -> None:
        pokes = q.unique(pokes)
        if pokes:
            log.info("sweeper re-issued wake-ups", count=len(pokes))
            await self._broker.publish([
                turn_message(workflow, "wake", instance_id)
                for workflow, instance_id in pokes
            ])
