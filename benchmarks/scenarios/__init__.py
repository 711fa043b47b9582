"""The scenario registry: what each scenario runs on, and which figures it compares.

A scenario is one async function ``run(engine, options) -> dict`` per run; the CLI repeats
it, takes medians and prints the JSON lines. A scenario whose verdict compares figures
(``scale-out``: does the curve fall?) also defines ``derive(median) -> dict``, which draws
it from the medians: one short run is too noisy to judge alone. ``headline`` names the
figures the ``--compare`` line turns into Warren/peer ratios (dotted paths into the
result) and whether higher or lower is better; ``keys`` are what every result must contain
(the smoke test checks them).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._options import Options

WARREN_ENGINES = ("warren", "warren-embedded")
PEERS = ("dbos", "celery")


@dataclass(frozen=True, slots=True)
class Scenario:
    """One benchmark scenario."""

    name: str
    module: str
    summary: str
    engines: tuple[str, ...]
    keys: tuple[str, ...]
    headline: tuple[tuple[str, str], ...] = ()

    def runner(self) -> Callable[[str, Options], Awaitable[dict[str, Any]]]:
        """The scenario's ``run``."""
        run: Callable[[str, Options], Awaitable[dict[str, Any]]] = self._module().run
        return run

    def derived(self, median: dict[str, Any]) -> dict[str, Any]:
        """``median`` with what the scenario's ``derive`` draws from it, if it has one."""
        derive: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(
            self._module(), "derive", None)
        return derive(median) if derive is not None else median

    def _module(self) -> Any:
        """The scenario's module, imported lazily: peers' packages are optional."""
        return importlib.import_module(f"benchmarks.scenarios.{self.module}")


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("throughput", "throughput",
             "N instances x 3 no-op steps: instances/s, steps/s, creation rates",
             (*WARREN_ENGINES, *PEERS), ("instances_per_s", "steps_per_s", "elapsed_s"),
             (("steps_per_s", "higher"), ("instances_per_s", "higher"))),
    Scenario("latency", "latency",
             "one instance at a time: create->complete and create->first step, p50/p99",
             (*WARREN_ENGINES, *PEERS), ("create_to_complete_ms", "create_to_first_step_ms"),
             (("create_to_complete_ms.p50", "lower"), ("create_to_complete_ms.p99", "lower"),
              ("create_to_first_step_ms.p50", "lower"))),
    Scenario("delay", "delay",
             "instances sleeping random durations: lateness p50/p99/max, early count",
             WARREN_ENGINES, ("lateness_ms", "early")),
    Scenario("fanout", "fanout",
             "one instance gathering N parallel steps: wall time",
             (*WARREN_ENGINES, "dbos"), ("wall_s", "steps_per_s"),
             (("wall_s", "lower"),)),
    Scenario("long-history", "long_history",
             "K sequential steps in one instance: time per step at each K, ratio Kmax/Kmin",
             (*WARREN_ENGINES, "dbos"), ("per_step_ms", "ratio"),
             (("per_step_ms.10", "lower"), ("per_step_ms.1000", "lower"), ("ratio", "lower"))),
    Scenario("sleepers", "sleepers",
             "many sleeping instances: lateness, early count, worker RSS with N/20 vs N parked",
             WARREN_ENGINES, ("lateness_ms", "early", "rss_mb")),
    Scenario("scale-out", "scale_out",
             "throughput with 1, 2, 4 worker processes; Warren also with the instances "
             "created first", ("warren", *PEERS), ("curve", "speedup_2_over_1", "machine"),
             (("curve.1", "higher"), ("curve.2", "higher"), ("curve.4", "higher"),
              ("speedup_2_over_1", "higher"))),
    Scenario("events", "events",
             "N instances waiting for an event; event -> step start latency",
             WARREN_ENGINES, ("available",)),
    Scenario("admission", "admission",
             "N instances behind max_concurrency: creation and admission rates, first vs "
             "last 10% of admissions, max running",
             ("warren",), ("creation_per_s", "admission_per_s", "flat_ratio", "max_running",
                           "limit_held")),
)}
