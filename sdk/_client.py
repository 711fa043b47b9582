"""The client: create instances and follow them, from any Python service.

This is the thin public layer; the work is done by a backend from ``engine`` that talks to
the broker and the store, imported when a client connects, so that importing ``sdk``
pulls in nothing of the engine.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdk._config import (
    check_event_type,
    check_instance_id,
    check_step_name,
    check_workflow_name,
)
from sdk.errors import InstanceNotFoundError, LimitExceededError, ValidationError, WarrenError

MAX_BATCH = 100
FINISHED = frozenset({"complete", "errored", "terminated"})
STATUSES = frozenset({"queued", "running", "waiting", "paused", "waiting_for_pause", "complete",
                      "errored", "terminated", "unknown"})


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """An instance's status (API.md §6). ``to_dict()`` gives the JSON form."""

    id: str
    workflow: str
    status: str
    params: Any
    output: Any
    error: Mapping[str, Any] | None
    rollback: Mapping[str, Any] | None
    created: str | None
    started: str | None
    ended: str | None
    steps: Sequence[Mapping[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceStatus:
        return cls(
            id=data["id"], workflow=data["workflow"], status=data["status"],
            params=data.get("params"), output=data.get("output"), error=data.get("error"),
            rollback=data.get("rollback"), created=data.get("created"),
            started=data.get("started"), ended=data.get("ended"),
            steps=list(data.get("steps") or []),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "workflow": self.workflow, "status": self.status,
            "params": self.params, "output": self.output,
            "error": None if self.error is None else dict(self.error),
            "rollback": None if self.rollback is None else dict(self.rollback),
            "created": self.created, "started": self.started, "ended": self.ended,
            "steps": [dict(s) for s in self.steps],
        }


@dataclass(frozen=True, slots=True)
class Page:
    """One page of :meth:`Workflow.list`: pass ``next_cursor`` back for the next (None: end)."""

    items: list[InstanceStatus]
    next_cursor: str | None


class ClientBackend(Protocol):
    """What a client needs from the engine side (implemented in ``engine``)."""

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def create(self, workflow: str, items: Sequence[tuple[str | None, Any]]) -> list[str]: ...
    async def status(self, workflow: str, instance_id: str) -> dict[str, Any] | None: ...
    async def send_event(
        self, workflow: str, instance_id: str, event_type: str, payload: Any,
        message_id: str | None,
    ) -> None: ...
    async def control(
        self, workflow: str, instance_id: str, op: str, *,
        from_step: tuple[str, int] | None = None, rollback: bool = False,
    ) -> None: ...
    async def list(
        self, workflow: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[builtins.list[dict[str, Any]], str | None]: ...
    async def workflows(self) -> builtins.list[str]: ...
    async def counts(self, workflow: str) -> dict[str, Any]: ...
    def subscribe(
        self, workflow: str | None, instance_id: str | None
    ) -> SubscriptionBackend: ...


class SubscriptionBackend(Protocol):
    """What a :class:`Subscription` needs from the engine side."""

    async def start(self) -> None: ...
    async def __anext__(self) -> dict[str, Any]: ...
    async def aclose(self) -> None: ...


class Subscription:
    """Lifecycle events as they are published (see :meth:`Client.subscribe`).

    Inside ``async with``, the subscription is bound when the block begins: every event
    published from then on is received, so create the instances to follow inside it.
    Iterated without it, it binds at the first iteration (and sees nothing from before).
    """

    def __init__(self, backend: SubscriptionBackend) -> None:
        self._backend = backend

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._backend.__anext__()

    async def aclose(self) -> None:
        """Stop receiving; an iteration in progress ends."""
        await self._backend.aclose()

    async def __aenter__(self) -> Subscription:
        await self._backend.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Instance:
    """Handle to one instance."""

    def __init__(self, client: Client, workflow: str, instance_id: str) -> None:
        self._client = client
        self.workflow = workflow
        self.id = instance_id

    def __repr__(self) -> str:
        return f"Instance(workflow={self.workflow!r}, id={self.id!r})"

    async def status(self) -> InstanceStatus:
        """The current status. Raises :class:`InstanceNotFoundError` if it does not exist."""
        data = await self._client._backend.status(self.workflow, self.id)
        if data is None:
            raise InstanceNotFoundError(f"no instance {self.id!r} in workflow {self.workflow!r}")
        return InstanceStatus.from_dict(data)

    async def send_event(
        self, event_type: str, payload: Any = None, *, message_id: str | None = None
    ) -> None:
        """Send an event to this instance (matched by ``step.wait_for_event``).

        ``message_id`` de-duplicates: the same id sent twice is delivered once.

        Raises:
            InstanceNotFoundError: no such instance.
            InvalidTransitionError: the instance is finished and takes no events.
            ValidationError: bad event type, or a payload that is not JSON or over 1 MiB.
        """
        check_event_type(event_type)
        await self._client._backend.send_event(
            self.workflow, self.id, event_type, payload, message_id)

    async def pause(self) -> None:
        """Pause at the next step boundary (``waiting_for_pause`` while steps are in flight)."""
        await self._client._backend.control(self.workflow, self.id, "pause")

    async def resume(self) -> None:
        """Resume a paused instance."""
        await self._client._backend.control(self.workflow, self.id, "resume")

    async def terminate(self, rollback: bool = False) -> None:
        """End the instance as ``terminated``; in-flight step results are discarded.

        Args:
            rollback: Run the saga rollback handlers of its steps first.
        """
        await self._client._backend.control(self.workflow, self.id, "terminate",
                                            rollback=rollback)

    async def restart(self, from_step: str | tuple[str, int] | None = None) -> None:
        """Run again with the same id and params.

        Args:
            from_step: ``None`` discards all history; a step name (first occurrence) or
                ``(name, count)`` keeps the history before that step and reruns it and
                every step after it.
        """
        step: tuple[str, int] | None
        if from_step is None:
            step = None
        elif isinstance(from_step, str):
            step = (check_step_name(from_step), 1)
        else:
            name, count = from_step
            if not isinstance(count, int) or count < 1:
                raise ValidationError(f"from_step count must be an integer >= 1, got {count!r}")
            step = (check_step_name(name), count)
        await self._client._backend.control(self.workflow, self.id, "restart", from_step=step)

    async def wait_for_status(
        self, status: str | Iterable[str], timeout: float = 30.0
    ) -> InstanceStatus:
        """Poll until the status is one of ``status``.

        Raises:
            TimeoutError: not reached within ``timeout`` seconds.
            WarrenError: the instance finished in another status (the message says how).
        """
        wanted = {status} if isinstance(status, str) else set(status)
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            current = await self.status()
            if current.status in wanted:
                return current
            if current.status in FINISHED:
                raise WarrenError(
                    f"instance {self.id!r} ended {current.status!r} (waiting for "
                    f"{sorted(wanted)}): {current.error}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"instance {self.id!r} still {current.status!r} after {timeout}s "
                    f"(waiting for {sorted(wanted)})"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)


class Workflow:
    """Handle to one workflow by name."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = check_workflow_name(name)

    async def create(self, params: Any = None, id: str | None = None) -> Instance:
        """Create an instance durably (stored, then announced on ``warren.create``).

        Raises:
            InstanceExistsError: an instance with ``id`` exists already.
            ValidationError: bad id, or params that are not JSON or over 1 MiB.
        """
        (created,) = await self.create_batch([{"id": id, "params": params}])
        return created

    async def create_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Instance]:
        """Create up to 100 instances at once, all or none: ``[{"id"?, "params"?}, ...]``."""
        if len(items) > MAX_BATCH:
            raise LimitExceededError(f"create_batch takes at most {MAX_BATCH} instances")
        pairs: list[tuple[str | None, Any]] = []
        for item in items:
            if not isinstance(item, Mapping) or not set(item) <= {"id", "params"}:
                raise ValidationError('each batch item must be a dict {"id"?, "params"?}')
            instance_id = item.get("id")
            if instance_id is not None:
                check_instance_id(instance_id)
            pairs.append((instance_id, item.get("params")))
        if not pairs:
            return []
        ids = await self._client._backend.create(self.name, pairs)
        return [Instance(self._client, self.name, i) for i in ids]

    async def list(
        self, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Instances newest first, ``limit`` (1 to 1000) at a time; stable under creation."""
        if not 1 <= limit <= 1000:
            raise ValidationError(f"limit must be between 1 and 1000, got {limit}")
        if status is not None and status not in STATUSES:
            raise ValidationError(f"unknown status {status!r}; one of {sorted(STATUSES)}")
        items, next_cursor = await self._client._backend.list(self.name, status, limit, cursor)
        return Page([InstanceStatus.from_dict(i) for i in items], next_cursor)

    async def counts(self) -> dict[str, Any]:
        """Instances ``running`` (holding a slot), ``queued`` for a slot and ``waiting``
        (sleeping, waiting for an event or a retry), with the limits in force."""
        return await self._client._backend.counts(self.name)

    async def get(self, id: str) -> Instance:
        """The instance with ``id``. Raises :class:`InstanceNotFoundError` if unknown."""
        instance = Instance(self._client, self.name, check_instance_id(id))
        await instance.status()
        return instance


class Client:
    """Entry point for services: ``async with Client.from_env() as client: ...``.

    Args:
        broker_url: ``amqp://...`` or ``memory://`` (default: ``WARREN_BROKER_URL``).
        database_url: store URL (default: ``WARREN_DATABASE_URL`` or the SQLite default).
        namespace: exchange/queue prefix (default: ``WARREN_NAMESPACE`` or ``warren``).
    """

    def __init__(
        self, *, broker_url: str | None = None, database_url: str | None = None,
        namespace: str | None = None,
    ) -> None:
        from engine._client_backend import EngineClientBackend  # see module docstring

        self._backend: ClientBackend = EngineClientBackend(
            broker_url=broker_url, database_url=database_url, namespace=namespace
        )

    @classmethod
    def from_env(cls) -> Client:
        """A client configured from ``WARREN_*`` environment variables."""
        return cls()

    def workflow(self, name: str) -> Workflow:
        """A handle to the workflow called ``name``."""
        return Workflow(self, name)

    async def workflows(self) -> list[str]:
        """Names of the workflows that workers have served."""
        return await self._backend.workflows()

    def subscribe(
        self, workflow: str | None = None, instance_id: str | None = None
    ) -> Subscription:
        """Follow lifecycle events live, of one workflow or instance, or of all.

        ``async with client.subscribe("transfer") as events:`` receives every event published
        after the block begins; ``async for event in events: ...``. Each event is a dict with
        ``kind`` (e.g. ``step.succeeded``, ``instance.complete``), ``workflow``,
        ``instance_id``, ``timestamp`` and details. Events are not durable: what is
        published while nothing is subscribed is gone. A subscription holds a queue on the
        broker until its block ends, :meth:`Subscription.aclose` or the client closes.
        """
        if workflow is not None:
            check_workflow_name(workflow)
        if instance_id is not None:
            check_instance_id(instance_id)
        return Subscription(self._backend.subscribe(workflow, instance_id))

    async def connect(self) -> None:
        await self._backend.connect()

    async def close(self) -> None:
        await self._backend.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
