"""The DBOS side of the peer benchmarks: the same workflows as ``benchmarks.workflows``.

Imported by the benchmark process (``inprocess`` mode and the client) and run as
``python -m benchmarks.peers.dbos_app`` for each DBOS worker process (``queue`` mode),
which launches DBOS on ``DBOS_SYSTEM_DATABASE_URL``, listens to the benchmark queue and
runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

from dbos import DBOS, DBOSConfig

APP_NAME = "warren-bench"
QUEUE = "bench"
READY_MARKER = "dbos worker ready"
POLLING_INTERVAL_S = float(os.environ.get("BENCH_DBOS_POLL", "0.01"))
"""How often each DBOS process polls the queue table. The default is 1 s, tuned for
not loading the database when idle; DBOS documents lowering it for latency-sensitive
queues, and 10 ms gives it every chance here (lower polls harder than it helps)."""


@DBOS.step()
def noop() -> None:
    return None


@DBOS.step()
def now() -> float:
    return time.time()


@DBOS.workflow()
def noop3() -> None:
    noop()
    noop()
    noop()


@DBOS.workflow()
def timed3() -> list[float]:
    return [now(), now(), now()]


@DBOS.step()
async def anoop() -> None:
    return None


@DBOS.workflow()
async def fanout(n: int) -> int:
    await asyncio.gather(*(anoop() for _ in range(n)))
    return n


@DBOS.workflow()
def long_history(k: int) -> float:
    last = 0.0
    for _ in range(k):
        last = now()
    return last


def config(system_database_url: str, executor_id: str | None = None) -> DBOSConfig:
    """DBOS configuration for the benchmark: Postgres system database, no telemetry
    export, warnings only (console logging per workflow costs CPU)."""
    cfg: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": system_database_url,
        "log_level": "WARNING",
        "application_version": "bench",
    }
    if executor_id:
        cfg["executor_id"] = executor_id
    return cfg


def register_queue(worker_concurrency: int | None = None) -> None:
    """Declare the benchmark queue (after launch: its configuration lives in the database)."""
    DBOS.register_queue(QUEUE, polling_interval_sec=POLLING_INTERVAL_S,
                        worker_concurrency=worker_concurrency)


def main() -> None:
    """A DBOS worker process: launch, listen to the queue, run until SIGTERM/SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    DBOS(config=config(os.environ["DBOS_SYSTEM_DATABASE_URL"],
                       os.environ.get("DBOS_EXECUTOR_ID")))
    DBOS.launch()
    register_queue()
    sys.stderr.write(READY_MARKER + "\n")
    sys.stderr.flush()
    stop.wait()
    DBOS.destroy(workflow_completion_timeout_sec=0)


if __name__ == "__main__":
    main()
