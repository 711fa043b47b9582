"""The knobs of a benchmark invocation, shared by every scenario and engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._isolation import Services


@dataclass(frozen=True, slots=True)
class Options:
    """Parsed command line (see ``python -m benchmarks --help``).

    Attributes:
        n: Scenario size (instances, runs, steps: each scenario says what it counts);
            ``None`` means the scenario's default (or its smoke size with ``smoke``).
        runs: Independent runs per engine; the reported figures are their medians.
        smoke: Tiny sizes and one run: proves the scenario works, measures nothing.
        workers: Warren worker processes (RabbitMQ + PostgreSQL engine).
        poll_s: Interval of the completion watcher (same for every engine).
        max_delay_s: ``delay``: longest random sleep.
        sleep_range_s: ``sleepers``: shortest and longest random sleep.
        ks: ``long-history``: the history lengths to time.
        worker_counts: ``scale-out``: the worker process counts to compare.
        max_concurrency: ``admission``: the workflow's concurrency limit.
        dbos_mode: ``auto`` (each scenario's fastest documented mode), ``queue`` (DBOS
            worker processes dequeue) or ``inprocess`` (``DBOS.start_workflow``).
        celery_concurrency: Celery prefork pool size.
        celery_prefetch: Celery ``worker_prefetch_multiplier``.
        services: Where PostgreSQL and RabbitMQ are.
        log_dir: Where worker logs and SQLite files go for this invocation.
        run_index: Which run of the invocation this is (0-based, set by the CLI): a
            scenario that compares settings within a run alternates their order with it.
    """

    n: int | None = None
    runs: int = 3
    smoke: bool = False
    workers: int = 2
    poll_s: float = 0.002
    max_delay_s: float = 10.0
    sleep_range_s: tuple[float, float] = (1.0, 20.0)
    ks: tuple[int, ...] = (10, 100, 1000)
    worker_counts: tuple[int, ...] = (1, 2, 4)
    max_concurrency: int = 100
    dbos_mode: str = "auto"
    celery_concurrency: int = 2
    celery_prefetch: int = 64
    services: Services = field(default_factory=Services)
    log_dir: Path = Path("/tmp")
    run_index: int = 0

    def size(self, default: int, smoke: int) -> int:
        """The scenario size: ``--n`` if given, else the smoke or the full default."""
        if self.n is not None:
            return self.n
        return smoke if self.smoke else default
