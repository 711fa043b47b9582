"""The engine side of ``sdk.Client``: creation writes SQL and publishes to ``create``."""

from __future__ import annotations

import asyncio
import base64
import builtins
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError

from broker import Broker, OutgoingMessage, Subscription, broker_from_url, turn_message
from broker.memory import MemoryBroker
from engine._announced import Announcement
from engine._clock import now_ms
from engine._codec import encode_json
from engine._create_group import CreateGroups
from engine._lifecycle import LifecycleEvents
from engine._settings import Settings
from engine._store._control import control_txn
from engine._store._database import Database
from engine._store._events import IncomingEvent, check_takes_events, store_events_txn
from engine._store._gates import gate_counts
from engine._store._instances import (
    NewInstance,
    create_instances_alone,
    create_instances_txn,
    instance_state,
    instance_status,
    list_instances,
    workflow_names,
)
from sdk.errors import (
    InstanceExistsError,
    ValidationError,
)


class EngineClientBackend:
    """Implements :class:`sdk._client.ClientBackend` on the broker and the store."""

    def __init__(
        self, *, broker_url: str | None, database_url: str | None, namespace: str | None
    ) -> None:
        self.settings = Settings.from_env(
            broker_url=broker_url, database_url=database_url, namespace=namespace
        )
        # Creates hold one connection per workflow at a time (they are group-committed), so
        # a small pool serves any number of concurrent creators and leaves room for reads.
        self._db = Database(self.settings.database_url, pool_size=4)
        self._events = LifecycleEvents(self.settings.lifecycle_events)
        self._broker: Broker = broker_from_url(self.settings.broker_url, self.settings.namespace)
        self._connected = False
        self._declared: set[str] = set()
        self._creates = CreateGroups(self._store_new, self._announce_new)

    async def connect(self) -> None:
        if self._connected:
            return
        await self._db.create_schema()
        await self._broker.connect()
        self._connected = True

    async def close(self) -> None:
        if not self._connected:
            return
        self._connected = False
        await self._creates.wait_idle()
        await self._broker.close()
        await self._db.close()

    async def create(self, workflow: str, items: Sequence[tuple[str | None, Any]]) -> list[str]:
        await self.connect()
        new = []
        for instance_id, params in items:  # validation errors are raised here, before queuing
            token = uuid.uuid4().hex
            new.append(NewInstance(instance_id or token, encode_json(params, what="params"),
                                   token))
        # Concurrent creates share one transaction and one publish (see _create_group); the
        # call still returns only once these rows are committed and their messages confirmed.
        await self._creates.create(workflow, new)
        return [n.instance_id for n in new]

    async def _store_new(
        self, workflow: str, new: Sequence[NewInstance]
    ) -> dict[str, Announcement]:
        created_at_ms = now_ms()
        if self._db.dialect == "postgresql":
            async with self._db.driver() as driver:
                alone = await create_instances_alone(driver, workflow, new, created_at_ms)
            if alone is not None:
                return {iid: Announcement(pk, created_at_ms) for iid, pk in alone.items()}
            # An id is taken: nothing was written, and the transaction below says which.
        try:
            async with self._db.transaction() as conn:
                pks = await create_instances_txn(conn, workflow, new, created_at_ms)
        except IntegrityError:  # a concurrent create took an id between check and insert
            ids = ", ".join(n.instance_id for n in new)
            raise InstanceExistsError(
                f"workflow {workflow!r} already has an instance with id among: {ids}") from None
        return {iid: Announcement(pk, created_at_ms) for iid, pk in pks.items()}

    async def _announce_new(
        self, workflow: str, new: Sequence[NewInstance], rows: Mapping[str, Announcement]
    ) -> None:
        if workflow not in self._declared:
            # Lets clients create instances before any worker has started.
            await self._broker.declare_workflow(workflow)
            self._declared.add(workflow)
        # Stored first, so the id is taken and status() works at once; the create message
        # then starts it. SQL holds the instance, so the message is only a reminder and is
        # sent transient: its confirm waits for no disk write on the broker (a create one at
        # a time: 3.0 -> 1.8 ms). If the broker loses it, the sweeper starts the instance.
        await self._broker.publish([
            *(OutgoingMessage(
                "create", workflow,
                orjson.dumps({"id": n.instance_id, "params": orjson.Fragment(n.params)}),
                message_id=n.token, headers=rows[n.instance_id].headers(), persistent=False,
            ) for n in new),
            *(m for n in new
              for m in self._events.messages(workflow, n.instance_id, [("instance.queued", {})])),
        ])

    async def status(self, workflow: str, instance_id: str) -> dict[str, Any] | None:
        await self.connect()
        async with self._db.reading() as conn:
            return await instance_status(conn, workflow, instance_id)

    async def send_event(
        self, workflow: str, instance_id: str, event_type: str, payload: Any,
        message_id: str | None,
    ) -> None:
        await self.connect()
        body = encode_json(payload, what="event payload").encode()
        if isinstance(self._broker, MemoryBroker):
            # The embedded broker lives in this process: a message through it would never
            # reach a worker in another one (a script beside `warren dev`). Stored here, the
            # event waits in SQL for whichever worker turns the instance next.
            async with self._db.transaction() as conn:
                [status] = await store_events_txn(conn, workflow, [IncomingEvent(
                    instance_id, event_type, body.decode(), message_id)], now_ms())
            check_takes_events(workflow, instance_id, status)
            await self._poke(workflow, instance_id)
            return
        async with self._db.reading() as conn:
            status = await instance_state(conn, workflow, instance_id)
        check_takes_events(workflow, instance_id, status)
        # The same path as a webhook relay: the worker stores it (once per message id).
        await self._broker.publish([OutgoingMessage(
            "events", f"{workflow}.{instance_id}.{event_type}", body,
            message_id=message_id or uuid.uuid4().hex)])

    async def control(
        self, workflow: str, instance_id: str, op: str, *,
        from_step: tuple[str, int] | None = None, rollback: bool = False,
    ) -> None:
        await self.connect()
        async with self._db.transaction() as conn:
            await control_txn(conn, workflow, instance_id, op, from_step, rollback)
        # Poke even when the command was already in effect: if an earlier call recorded it
        # but its wake-up was lost, calling again is how a caller repairs that.
        await self._poke(workflow, instance_id)

    async def _poke(self, workflow: str, instance_id: str) -> None:
        if workflow not in self._declared:
            await self._broker.declare_workflow(workflow)
            self._declared.add(workflow)
        await self._broker.publish([turn_message(workflow, "control", instance_id)])

    async def list(
        self, workflow: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        await self.connect()
        after = _decode_cursor(cursor)
        async with self._db.reading() as conn:
            rows = await list_instances(conn, workflow, status, limit + 1, after)
        page, more = rows[:limit], len(rows) > limit
        next_cursor = _encode_cursor(page[-1]["pk"]) if more and page else None
        for row in page:
            row.pop("pk")
        return page, next_cursor

    async def counts(self, workflow: str) -> dict[str, Any]:
        await self.connect()
        async with self._db.reading() as conn:
            return await gate_counts(conn, workflow)

    async def workflows(self) -> builtins.list[str]:
        await self.connect()
        async with self._db.reading() as conn:
            return await workflow_names(conn)

    def subscribe(self, workflow: str | None, instance_id: str | None) -> _LifecycleSubscription:
        return _LifecycleSubscription(self._broker, self.connect,
                                      f"{workflow or '*'}.{instance_id or '*'}.#")


class _LifecycleSubscription:
    """Lifecycle events matching one binding key, decoded (``sdk.Subscription``'s backend).

    Nothing is bound until :meth:`start` (or the first ``__anext__``): the client connects
    then, not when ``subscribe`` is called.
    """

    def __init__(self, broker: Broker, connect: Callable[[], Awaitable[None]],
                 binding_key: str) -> None:
        self._broker = broker
        self._connect = connect
        self._binding_key = binding_key
        self._subscription: Subscription | None = None
        self._starting = asyncio.Lock()  # two starts at once must not bind twice
        self._closed = False

    async def start(self) -> None:
        async with self._starting:
            if self._subscription is None:
                if self._closed:
                    return
                await self._connect()
                if self._closed:  # closed while connecting: bind nothing
                    return
                self._subscription = self._broker.subscribe("lifecycle", self._binding_key)
            try:
                await self._subscription.start()
            except BaseException:
                # Unregister it from the broker now; a later start binds a new one.
                failed, self._subscription = self._subscription, None
                await failed.aclose()
                raise

    async def __anext__(self) -> dict[str, Any]:
        await self.start()
        if self._subscription is None:  # closed before it started
            raise StopAsyncIteration
        delivery = await self._subscription.__anext__()
        return dict(orjson.loads(delivery.body))

    async def aclose(self) -> None:
        self._closed = True
        if self._subscription is not None:
            await self._subscription.aclose()


def _encode_cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(f"pk:{pk}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, value = text.split(":", 1)
        pk = int(value)
        if kind != "pk" or not 0 < pk < 2**63:  # a primary key: what the store can compare
            raise ValueError(kind)
        return pk
    except (ValueError, UnicodeDecodeError):
        raise ValidationError(f"invalid cursor {cursor!r}") from None
