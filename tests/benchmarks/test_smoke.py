"""Every benchmark scenario's smoke mode runs and prints a valid JSON line (benchmarks never rot).

Each scenario runs as ``python -m benchmarks <scenario> --smoke`` in a subprocess, exactly as
a user would run it, on the embedded engine, on RabbitMQ + PostgreSQL, and on each peer
(DBOS, Celery) that runs it. The peers are the optional ``bench`` extra, which CI installs:
without it their cases are skipped, except in CI, where that fails. The subprocesses are
started together (a few at a time) by one module fixture so that the whole file stays
within about a minute and a half: smoke sizes are tiny and their figures are not looked
at, only their shape.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks._cli import PEER_PACKAGES
from benchmarks.scenarios import PEERS, SCENARIOS
from tests.helpers import in_ci

REPO = Path(__file__).resolve().parents[2]
PARALLEL = 6
LIMIT_S = 150


@dataclass(frozen=True)
class Case:
    scenario: str
    engine: str

    @property
    def id(self) -> str:
        return f"{self.scenario}-{self.engine}"


CASES = [Case(name, engine) for name, s in SCENARIOS.items()
         for engine in ("warren-embedded", "warren", *PEERS) if engine in s.engines]


@dataclass
class Outcome:
    returncode: int
    lines: list[dict[str, Any]]
    stderr: str


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _run(case: Case) -> Outcome:
    argv = [sys.executable, "-m", "benchmarks", case.scenario, "--smoke",
            "--engine", case.engine]
    if case.scenario != "scale-out":
        argv += ["--workers", "1"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    lines = []
    for raw in proc.stdout.splitlines():
        lines.append(json.loads(raw))  # stdout must hold only JSON lines
    return Outcome(proc.returncode, lines, proc.stderr[-3000:])


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, Outcome]]:
    services = _reachable(5432) and _reachable(5672)
    if not services and in_ci():
        pytest.fail("PostgreSQL/RabbitMQ unreachable (required when CI=true)")
    missing = sorted({p for p in PEERS if importlib.util.find_spec(PEER_PACKAGES[p]) is None})
    if missing and in_ci():
        pytest.fail(f"peer packages missing: {missing} (CI installs the bench extra)")
    cases = [c for c in CASES if (services or c.engine == "warren-embedded")
             and c.engine not in missing]
    # Longest first (scale-out's several deployments, the peers' worker start-up, real
    # services), so none starts last.
    cases.sort(key=lambda c: (c.scenario != "scale-out", c.engine not in PEERS,
                              c.engine != "warren"))
    with ThreadPoolExecutor(PARALLEL) as pool:
        yield dict(zip([c.id for c in cases], pool.map(_run, cases), strict=True))


@pytest.mark.timeout(LIMIT_S * 4)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_smoke_prints_a_valid_json_line(case: Case, outcomes: dict[str, Outcome]) -> None:
    if case.id not in outcomes:
        pytest.skip("PostgreSQL/RabbitMQ unreachable, or the peer is not installed")
    outcome = outcomes[case.id]
    assert outcome.returncode == 0, outcome.stderr
    assert len(outcome.lines) == 1, outcome.lines
    (line,) = outcome.lines
    assert line["scenario"] == case.scenario and line["engine"] == case.engine
    assert "error" not in line, line["error"]
    assert line["n_runs"] == 1 and len(line["runs"]) == 1
    median = line["median"]
    if median.get("available") is False:  # e.g. events before wait_for_event exists
        assert line.get("reason")
        return
    missing = [k for k in SCENARIOS[case.scenario].keys if k not in median]
    assert not missing, f"missing keys {missing} in {median}"


def _the_run(outcomes: dict[str, Outcome], scenario: str) -> dict[str, Any]:
    """The one run of a scenario's smoke on RabbitMQ + PostgreSQL (skips without them)."""
    case = Case(scenario, "warren")
    if case.id not in outcomes:
        pytest.skip("PostgreSQL/RabbitMQ unreachable")
    outcome = outcomes[case.id]
    assert outcome.returncode == 0, outcome.stderr
    (run,) = outcome.lines[0]["runs"]
    return dict(run)


@pytest.mark.timeout(LIMIT_S * 4)
def test_admission_smoke_never_runs_more_than_the_limit(outcomes: dict[str, Outcome]) -> None:
    run = _the_run(outcomes, "admission")
    assert run["max_concurrency"] == 10  # the smoke size
    assert run["limit_held"], run["max_running"]
    assert 0 < run["max_running"]["from_rows"] <= 10
    assert run["first_window"]["per_s"] > 0 and run["last_window"]["per_s"] > 0


@pytest.mark.timeout(LIMIT_S * 4)
def test_throughput_smoke_counts_its_sql_writes(outcomes: dict[str, Outcome]) -> None:
    """On PostgreSQL, ``throughput`` says what SQL a step cost, HOT updates included."""
    sql = _the_run(outcomes, "throughput")["sql"]
    # Not > 0: the probe's own polls are subtracted, and PostgreSQL publishes a
    # connection's commits about once a second, so a tiny run can net out at 0.
    assert sql["commits_per_step"] < 1, sql
    # Each instance writes its row and 3 step rows (an attempt that succeeds at once writes
    # no attempt row): 4/3 per step, plus the workers' few start-up rows. Fewer: the
    # client's creates were not counted; far more: the creation phase's 350 creates were
    # (PostgreSQL publishes a connection's counters when it closes, so both depend on
    # closing the client's connections at the right time).
    assert round(4 / 3, 3) <= sql["inserted_per_step"] < 4 / 3 + 1, sql  # rounded as reported
    assert 0 < sql["hot_updated_per_step"] <= sql["updated_per_step"], sql


@pytest.mark.timeout(LIMIT_S * 4)
def test_scale_out_smoke_also_measures_warren_on_a_backlog(outcomes: dict[str, Outcome]) -> None:
    backlog = _the_run(outcomes, "scale-out")["backlog"]
    assert set(backlog["curve"]) == set(backlog["machine"]) == {"1", "2"}  # the smoke counts
    assert all(v > 0 for v in backlog["curve"].values()), backlog
