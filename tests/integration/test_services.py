"""The shared service fixtures give working, isolated PostgreSQL and RabbitMQ."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

import aio_pika
import asyncpg
import pytest

from tests.helpers import asyncpg_dsn, eventually, in_ci


@pytest.mark.postgres
async def test_postgres_url_is_a_fresh_usable_database(postgres_url: str, namespace: str) -> None:
    """The URL points at a private ``warren_test_*`` database we can write to."""
    assert postgres_url.startswith("postgresql+asyncpg://")
    database = unquote(urlsplit(postgres_url).path.lstrip("/"))
    assert re.fullmatch(r"warren_test_[0-9a-f]+", database), database

    table = f"probe_{namespace}"
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        assert await conn.fetchval("SELECT current_database()") == database
        await conn.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, body text NOT NULL)")
        await conn.execute(f"INSERT INTO {table} (id, body) VALUES ($1, $2)", 1, "hello")
        rows = await conn.fetch(f"SELECT id, body FROM {table} ORDER BY id")
        assert [tuple(row) for row in rows] == [(1, "hello")]
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


@pytest.mark.rabbitmq
async def test_rabbit_url_is_a_private_usable_vhost(rabbit_url: str, namespace: str) -> None:
    """The URL points at a private vhost (``/`` only as a non-root fallback)."""
    vhost = unquote(urlsplit(rabbit_url).path[1:])
    if in_ci():
        # CI runs as root, so the fixture must have created a dedicated vhost.
        assert re.fullmatch(r"warren-test-[0-9a-f]+", vhost), (
            f"CI must get a dedicated vhost, got {vhost!r}: is rabbitmqctl usable?"
        )
    else:
        assert vhost == "/" or re.fullmatch(r"warren-test-[0-9a-f]+", vhost), vhost

    connection = await aio_pika.connect(rabbit_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{namespace}.probe", exclusive=True)
        await channel.default_exchange.publish(
            aio_pika.Message(body=b"ping", message_id=namespace), routing_key=queue.name
        )

        async def received() -> aio_pika.abc.AbstractIncomingMessage | None:
            return await queue.get(no_ack=True, fail=False)

        message = await eventually(received, timeout=5.0, message="probe message delivered")
        assert message is not None
        assert message.body == b"ping"
        assert message.message_id == namespace
    finally:
        await connection.close()
