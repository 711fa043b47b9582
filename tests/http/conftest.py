"""A real HTTP server for the API tests: uvicorn on a free port, over a worker and a client.

Everything runs on the test's event loop; requests go over TCP with httpx, so routing,
middleware, error handlers and serialization are exercised exactly as in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest

from engine import Worker
from engine._http._app import create_app
from engine._http._config import ApiSettings
from engine._http._server import ApiServer
from sdk import Client
from tests.http.workflows import Approval, Collector, Greet, Sleepy


@dataclass
class RunningApi:
    """A served API: its base URL, an HTTP client on it, and the SDK client behind it."""

    url: str
    http: httpx.AsyncClient
    client: Client


StartApi = Callable[..., AbstractAsyncContextManager[RunningApi]]


@pytest.fixture
def start_api(namespace: str, sqlite_url: str) -> StartApi:
    """``async with start_api(ApiSettings(...)) as api:`` serves the test workflows."""

    @asynccontextmanager
    async def start(settings: ApiSettings | None = None) -> AsyncIterator[RunningApi]:
        broker_url = f"memory://{namespace}"
        worker = Worker(
            [Greet, Approval, Sleepy, Collector],
            broker_url=broker_url,
            database_url=sqlite_url,
            namespace=namespace,
            sweep_interval_s=0.2,
            sweep_grace_s=0.5,
        )
        client = Client(broker_url=broker_url, database_url=sqlite_url, namespace=namespace)
        async with worker, client:
            server = ApiServer(create_app(client, settings or ApiSettings()), "127.0.0.1", 0)
            await server.start()
            try:
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                    yield RunningApi(server.url, http, client)
            finally:
                await server.stop()

    return start


@pytest.fixture
async def api(start_api: StartApi) -> AsyncIterator[RunningApi]:
    """The API with default settings: no token, no webhook secret."""
    async with start_api() as running:
        yield running
