"""The long-running commands of ``warren``: ``worker``, ``api``, ``dev``, and ``run``.

``dev`` is the first-run experience: a worker and the HTTP API in one process, on the
embedded defaults (in-process broker, SQLite file) unless ``WARREN_*`` variables say
otherwise. ``run`` goes one step further for a newcomer: it serves one file's workflows,
creates one instance, follows it to the end and returns its status.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog
from sqlalchemy.engine import make_url

from engine._gc import tune_gc_for_serving
from engine._http._remote import DEFAULT_API_URL
from engine._settings import Settings
from engine._worker import Worker
from sdk import Client, InstanceStatus, WorkflowEntrypoint
from sdk.errors import ValidationError

log = structlog.get_logger("warren.dev")

FINISHED = frozenset({"complete", "errored", "terminated"})


def _on_stop_signals(stop: Callable[[], object]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


async def serve_worker(
    workflows: Sequence[type[WorkflowEntrypoint]], concurrency: int | None = None
) -> None:
    """``warren worker``: serve ``workflows`` until SIGINT or SIGTERM."""
    worker = Worker(workflows, concurrency=concurrency)
    _on_stop_signals(lambda: asyncio.ensure_future(worker.stop()))
    await worker.start()
    tune_gc_for_serving()
    await worker.run()


async def serve_api(host: str, port: int) -> None:
    """``warren api``: serve the HTTP API alone until SIGINT or SIGTERM.

    Raises:
        ValidationError: No RabbitMQ is configured (``WARREN_BROKER_URL``).
    """
    from engine._http._app import create_app
    from engine._http._server import ApiServer

    settings = Settings.from_env()
    if not settings.broker_url or settings.broker_url.startswith("memory://"):
        # The embedded broker lives inside one process: events and control commands sent
        # through it would never reach a worker in another process.
        raise ValidationError(
            "`warren api` serves workers in other processes, so it needs a shared broker: "
            "set WARREN_BROKER_URL=amqp://... (or run `warren dev MODULE` for a worker and "
            "the API in one process on the embedded broker)"
        )
    stopped = asyncio.Event()
    _on_stop_signals(stopped.set)
    async with _client(settings) as client:
        server = ApiServer(create_app(client), host, port)
        await server.start()
        print(banner("Warren API", settings, server.url, []), flush=True)
        try:
            await stopped.wait()
        finally:
            await server.stop()


async def serve_dev(
    workflows: Sequence[type[WorkflowEntrypoint]],
    host: str,
    port: int,
    concurrency: int | None = None,
) -> None:
    """``warren dev``: a worker and the HTTP API in one process until SIGINT or SIGTERM."""
    from engine._http._app import create_app
    from engine._http._server import ApiServer

    settings = Settings.from_env()
    stopped = asyncio.Event()
    _on_stop_signals(stopped.set)
    worker = Worker(workflows, settings=settings, concurrency=concurrency)
    async with worker, _client(settings) as client:
        server = ApiServer(create_app(client), host, port)
        await server.start()
        tune_gc_for_serving()
        print(banner("Warren dev", settings, server.url, [w.name for w in workflows]), flush=True)
        try:
            await stopped.wait()
        finally:
            await server.stop()


async def run_once(
    workflow: type[WorkflowEntrypoint],
    params: Any,
    *,
    instance_id: str | None = None,
    timeout_s: float = 300.0,
    on_status: Callable[[InstanceStatus], None] | None = None,
) -> InstanceStatus:
    """``warren run``: serve ``workflow`` in process, run one instance to its end.

    Args:
        workflow: The workflow to run.
        params: The instance's params.
        instance_id: Its id (generated when ``None``).
        timeout_s: Seconds to wait for the instance to finish.
        on_status: Called with every status seen while following the instance.

    Returns:
        The final status (``complete``, ``errored`` or ``terminated``).

    Raises:
        TimeoutError: Still not finished after ``timeout`` seconds (e.g. waiting for an event).
    """
    settings = Settings.from_env()
    async with Worker([workflow], settings=settings), _client(settings) as client:
        instance = await client.workflow(workflow.name).create(params=params, id=instance_id)
        deadline = time.monotonic() + timeout_s
        while True:
            status = await instance.status()
            if on_status is not None:
                on_status(status)
            if status.status in FINISHED:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"instance {instance.id} is still {status.status} after {timeout_s:g}s; "
                    f"follow it with `warren dev` and `warren instances describe "
                    f"{workflow.name} {instance.id}`"
                )
            await asyncio.sleep(0.1)


def _client(settings: Settings) -> Client:
    return Client(
        broker_url=settings.broker_url,
        database_url=settings.database_url,
        namespace=settings.namespace,
    )


def describe_database(url: str) -> str:
    """Where the store is, for people: a SQLite file's absolute path, or the redacted URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ":memory:"
        if database == ":memory:":
            return "SQLite in memory (lost on exit)"
        return f"{Path(database).resolve()} (SQLite)"
    return parsed.render_as_string(hide_password=True)


def describe_broker(url: str | None) -> str:
    """The broker, for people: embedded or the RabbitMQ URL without its password."""
    if not url or url.startswith("memory://"):
        return "embedded, in this process (memory://)"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def banner(title: str, settings: Settings, api_url: str, workflows: Sequence[str]) -> str:
    """The startup banner of ``warren dev`` and ``warren api``."""
    rows = []
    if workflows:
        rows.append(("workflows", ", ".join(sorted(workflows))))
    rows += [
        ("API", api_url),
        ("API docs", f"{api_url}/docs  (OpenAPI: {api_url}/openapi.json)"),
        ("dashboard", f"{api_url}/dashboard"),
        ("database", describe_database(settings.database_url)),
        ("broker", describe_broker(settings.broker_url)),
    ]
    lines = [f"{title} is running. Press Ctrl+C to stop.", ""]
    lines += [f"  {key:<10} {value}" for key, value in rows]
    if workflows:
        example = sorted(workflows)[0]
        lines += ["", "  Try, in another terminal:"]
        if api_url != DEFAULT_API_URL:
            lines.append(f"    export WARREN_API_URL={api_url}")
        lines += [
            f"    warren trigger {example} '{{}}'",
            f"    warren instances describe {example} latest --watch",
        ]
    return "\n".join(lines) + "\n"
