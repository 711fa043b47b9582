"""The engine side of ``sdk.Client``: creation writes SQL and publishes to ``create``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from broker import Broker, OutgoingMessage, broker_from_url
from engine._clock import now_ms
from engine._codec import encode_json
from engine._settings import Settings
from engine._store._database import Database
from engine._store._instances import NewInstance, create_instances_txn, instance_status


class EngineClientBackend:
    """Implements :class:`sdk._client.ClientBackend` on the broker and the store."""

    def __init__(
        self, *, broker_url: str | None, database_url: str | None, namespace: str | None
    ) -> None:
        self.settings = Settings.from_env(
            broker_url=broker_url, database_url=database_url, namespace=namespace
        )
        self._db = Database(self.settings.database_url, pool_size=4)
        self._broker: Broker = broker_from_url(self.settings.broker_url, self.settings.namespace)
        self._connected = False
        self._declared: set[str] = set()

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
        await self._broker.close()
        await self._db.close()

    async def create(self, workflow: str, items: Sequence[tuple[str | None, Any]]) -> list[str]:
        await self.connect()
        new = []
        for instance_id, params in items:
            token = uuid.uuid4().hex
            new.append(NewInstance(instance_id or token, encode_json(params, what="params"),
                                   token))
        async with self._db.transaction() as conn:
            await create_instances_txn(conn, workflow, new, now_ms())
        if workflow not in self._declared:
            # Lets clients create instances before any worker has started.
            await self._broker.declare_workflow(workflow)
            self._declared.add(workflow)
        # Stored first, so the id is taken and status() works at once; the create message
        # then starts it (if it were lost, the sweeper starts queued instances).
        await self._broker.publish([
            OutgoingMessage(
                "create", workflow,
                orjson.dumps({"id": n.instance_id, "params": orjson.Fragment(n.params)}),
                message_id=n.token,
            )
            for n in new
        ])
        return [n.instance_id for n in new]

    async def status(self, workflow: str, instance_id: str) -> dict[str, Any] | None:
        await self.connect()
        async with self._db.reading() as conn:
            return await instance_status(conn, workflow, instance_id)
