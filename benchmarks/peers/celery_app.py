"""The Celery side of the peer benchmarks: the worker's app and its tasks.

Run by ``celery -A benchmarks.peers.celery_app worker ...``; configured from the
environment (``BENCH_CELERY_BROKER``, ``BENCH_CELERY_BACKEND``, ``BENCH_CELERY_PREFETCH``)
because the benchmark gives each run its own vhost and database. The client side builds
its own app per run with :func:`make_app` and refers to the tasks by name.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready

READY_MARKER = "celery worker ready"
NOOP = "bench.noop"
NOW = "bench.now"


def make_app(broker: str, backend: str, prefetch: int = 64) -> Celery:
    """A Celery app on ``broker`` with the PostgreSQL result backend ``backend``.

    Settings, each a documented throughput recommendation or a Celery default kept on
    purpose (see benchmarks/README.md): JSON serialization; prefetch multiplier raised for
    many short tasks (Celery's "Optimizing" guide); results stored for every task (the
    database backend is the durable record the comparison is about); acks early, persistent
    messages, no publisher confirms (all Celery defaults).
    """
    app = Celery("warren_bench", broker=broker, backend=backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=prefetch,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=None,  # no cleanup task competing with the benchmark
    )
    return app


app = make_app(
    os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("BENCH_CELERY_BACKEND", "db+postgresql://postgres@127.0.0.1:5432/postgres"),
    int(os.environ.get("BENCH_CELERY_PREFETCH", "64")),
)


@app.task(name=NOOP)  # type: ignore[untyped-decorator]
def noop(_previous: Any = None) -> None:
    """A no-op chain link (receives the previous link's result, as chains do)."""
    return None


@app.task(name=NOW)  # type: ignore[untyped-decorator]
def now(previous: list[float] | None = None) -> list[float]:
    """Appends when this link started to the times of the links before it."""
    return [*(previous or []), time.time()]


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce_ready(**_: Any) -> None:
    stream = sys.__stderr__ or sys.stderr  # the real stderr: Celery redirects sys.stderr
    stream.write(READY_MARKER + "\n")
    stream.flush()
