"""Fixtures of the broker contract suite.

RabbitMQ tests run in a fresh vhost per session (created and deleted with ``rabbitmqctl``) and a
fresh namespace per test. Without a reachable RabbitMQ they are skipped, unless ``CI=true``, in
which case they fail. ``WARREN_TEST_AMQP_URL`` points them at another server (default
``amqp://guest:guest@127.0.0.1:5672/``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from broker import Broker
from broker.memory import MemoryBroker
from broker.rabbitmq import RabbitBroker

BrokerFactory = Callable[..., Awaitable[Broker]]

_DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
TEST_DELAY_BITS = 13


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"RabbitMQ is required in CI: {reason}")
    pytest.skip(reason)


def _rabbitmqctl(ctl: str, *args: str) -> None:
    subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def rabbit_url() -> Iterator[str]:
    """URL of a fresh vhost on the test RabbitMQ, deleted at the end of the session."""
    base = os.environ.get("WARREN_TEST_AMQP_URL", _DEFAULT_URL)
    parts = urlsplit(base)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2).close()
    except OSError as exc:
        _unavailable(f"RabbitMQ unreachable at {parts.hostname}:{parts.port}: {exc}")
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        # A remote broker (e.g. a CI service): isolation comes from per-test namespaces only.
        yield base
        return
    vhost = f"warren-test-{uuid.uuid4().hex[:12]}"
    try:
        _rabbitmqctl(ctl, "add_vhost", vhost)
        user = parts.username or "guest"
        _rabbitmqctl(ctl, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    except (subprocess.SubprocessError, OSError) as exc:
        _unavailable(f"could not create vhost {vhost} with rabbitmqctl: {exc}")
    try:
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    finally:
        _rabbitmqctl(ctl, "delete_vhost", vhost)


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def backend(request: pytest.FixtureRequest) -> str:
    """Which Broker implementation the test runs against."""
    return str(request.param)


@pytest.fixture
async def make_broker(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[BrokerFactory]:
    """Factory of connected brokers of the current backend, closed after the test.

    Brokers made with the same namespace in one test share state (one memory "server", or the
    RabbitMQ vhost). ``max_delay_bits`` is passed to RabbitBroker only; it defaults to 13
    (delays up to 8 s per pass) because declaring the full 35-bit topology costs seconds per
    fresh namespace.
    """
    url = request.getfixturevalue("rabbit_url") if backend == "rabbitmq" else None
    server = f"contract-{uuid.uuid4().hex}"
    default_namespace = f"t{uuid.uuid4().hex[:10]}"
    made: list[Broker] = []

    async def make(namespace: str | None = None, **options: Any) -> Broker:
        namespace = namespace or default_namespace
        broker: Broker
        if url is None:
            broker = MemoryBroker.shared(server, namespace)
        else:
            options.setdefault("max_delay_bits", TEST_DELAY_BITS)
            broker = RabbitBroker(url, namespace, **options)
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in reversed(made):
        await broker.close()


@pytest.fixture
async def broker(make_broker: BrokerFactory) -> Broker:
    """A connected broker in a fresh namespace."""
    return await make_broker()
