"""Group commit for client creates: concurrent callers share one transaction and one publish.

A create is durable once its row is committed, and started by its message (confirmed), so a
lone create costs a commit plus a publish round trip. Callers that arrive while such a write is in
flight wait in line; the next write takes everyone in line (up to ``max_items`` instances)
and stores and announces them together. Nothing waits on a timer: a lone caller is written at
once, and only callers that are already waiting are coalesced.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from engine._announced import Announcement
from engine._store._instances import NewInstance
from sdk.errors import InstanceExistsError

log = structlog.get_logger("warren.client")

#: Instances per group transaction: large enough to absorb hundreds of concurrent callers,
#: small enough to keep one transaction and one publish short.
MAX_GROUP_ITEMS = 500

#: Stores instances in one transaction, all or none; raises InstanceExistsError on a taken id.
#: Returns what their create messages announce about the rows, by instance id.
Store = Callable[[str, Sequence[NewInstance]], Awaitable[Mapping[str, Announcement]]]
#: Publishes the create messages of stored instances and waits for the broker's confirms.
Announce = Callable[[str, Sequence[NewInstance], Mapping[str, Announcement]], Awaitable[None]]


@dataclass(eq=False, slots=True)
class _Unit:
    """One caller's creation (one ``create``, or one whole ``create_batch``): all or none."""

    items: Sequence[NewInstance]
    done: asyncio.Future[None]


class CreateGroups:
    """Coalesces concurrent creates per workflow into shared store-and-announce writes."""

    def __init__(self, store: Store, announce: Announce, *,
                 max_items: int = MAX_GROUP_ITEMS) -> None:
        self._store = store
        self._announce = announce
        self._max_items = max_items
        self._waiting: dict[str, deque[_Unit]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        # For tests and diagnosis: create transactions attempted (group and one-by-one), and
        # groups that had to be retried caller by caller because an id was taken.
        self.transactions = 0
        self.fallbacks = 0

    async def create(self, workflow: str, items: Sequence[NewInstance]) -> None:
        """Return once ``items`` are committed and announced, or raise as a lone create would."""
        unit = _Unit(items, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(workflow, deque()).append(unit)
        if workflow not in self._writers:
            # The write runs in its own task so a caller's cancellation never aborts a
            # transaction that other callers' instances are part of.
            self._writers[workflow] = asyncio.create_task(
                self._write_all(workflow), name=f"warren-create-{workflow}")
        await unit.done

    async def wait_idle(self) -> None:
        """Wait until the writes in flight are done (before closing the store and broker)."""
        while self._writers:
            await asyncio.gather(*self._writers.values(), return_exceptions=True)

    async def _write_all(self, workflow: str) -> None:
        waiting = self._waiting[workflow]
        try:
            while waiting:
                group = self._take(waiting)
                if group:
                    await self._write(workflow, group)
        finally:
            del self._writers[workflow]
            del self._waiting[workflow]
            for unit in waiting:  # only if this task was cancelled: nobody would write them
                unit.done.cancel()

    def _take(self, waiting: deque[_Unit]) -> list[_Unit]:
        """Everyone waiting, oldest first, up to ``max_items`` (a unit is never split)."""
        group: list[_Unit] = []
        count = 0
        while waiting and (not group or count + len(waiting[0].items) <= self._max_items):
            unit = waiting.popleft()
            if unit.done.done():  # cancelled while waiting: as if it had never called
                continue
            group.append(unit)
            count += len(unit.items)
        return group

    async def _write(self, workflow: str, group: list[_Unit]) -> None:
        try:
            self.transactions += 1
            try:
                rows: Mapping[str, Announcement] = await self._store(
                    workflow, [n for u in group for n in u.items])
                stored = group
            except InstanceExistsError:
                if len(group) == 1:
                    raise
                # Someone's id is taken (or two callers chose the same id): the others must
                # not fail for it, so store each caller alone, as if they had not met.
                self.fallbacks += 1
                log.debug("create group retried one by one", workflow=workflow,
                          callers=len(group))
                stored, rows = await self._store_one_by_one(workflow, group)
            if stored:
                await self._announce_or_leave_to_sweeper(
                    workflow, [n for u in stored for n in u.items], rows)
            for unit in stored:
                if not unit.done.done():
                    unit.done.set_result(None)
        except asyncio.CancelledError:
            for unit in group:
                unit.done.cancel()
            raise
        except Exception as exc:  # the store or the broker failed: every caller sees it
            for unit in group:
                if not unit.done.done():
                    unit.done.set_exception(exc)

    async def _announce_or_leave_to_sweeper(
        self, workflow: str, items: Sequence[NewInstance], rows: Mapping[str, Announcement]
    ) -> None:
        """Announce stored instances; if the broker fails, they are created all the same.

        The rows are committed: failing the callers would make them retry a create that
        took effect (``already_exists``), and the workers' sweeper starts an instance whose
        create message never came (API.md's transient creates rely on it too).
        """
        try:
            await self._announce(workflow, items, rows)
        except Exception:  # with its traceback: it may be a bug, not only the broker
            log.exception("created instances not announced; a worker's sweeper starts them",
                          workflow=workflow, instances=len(items))

    async def _store_one_by_one(
        self, workflow: str, group: list[_Unit]
    ) -> tuple[list[_Unit], dict[str, Announcement]]:
        stored = []
        rows: dict[str, Announcement] = {}
        for unit in group:
            if unit.done.done():  # cancelled, and its rows were rolled back with the group
                continue
            self.transactions += 1
            try:
                rows.update(await self._store(workflow, unit.items))
            except InstanceExistsError as exc:
                unit.done.set_exception(exc)
            else:
                stored.append(unit)
        return stored, rows
