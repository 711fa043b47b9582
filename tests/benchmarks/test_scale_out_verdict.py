"""``scale-out`` judges its curves on the medians of the runs, as it reports them, and
alternates the order of the worker counts from run to run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from benchmarks._cli import _line
from benchmarks._cli import run as _run_cli
from benchmarks._options import Options
from benchmarks.scenarios import SCENARIOS, scale_out


def _run(burst: dict[str, float], backlog: dict[str, float]) -> dict[str, Any]:
    return {"instances": 30, "curve": burst, "create_phase_s": {"1": 0.1, "2": 0.1, "4": 0.1},
            "backlog": {"curve": backlog}}


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    line = _line(SCENARIOS["scale-out"], "warren", Options(runs=len(runs)), runs, {})
    median: dict[str, Any] = line["median"]
    return median


def test_a_curve_whose_runs_each_dip_once_does_not_fall_in_the_median() -> None:
    # Each run's 4-worker point is noisy, and one of the three falls 10 % below its 2; the
    # median curve is 100 / 150 / 149.
    runs = [_run({"1": 100, "2": 150, "4": 135}, {"1": 100, "2": 150, "4": 149}),
            _run({"1": 101, "2": 149, "4": 149}, {"1": 99, "2": 151, "4": 152}),
            _run({"1": 99, "2": 151, "4": 155}, {"1": 101, "2": 149, "4": 130})]
    median = _median(runs)
    assert median["curve"] == {"1": 100, "2": 150, "4": 149}
    assert median["never_falls"] is True and median["speedup_2_over_1"] == 1.5
    assert median["backlog"]["never_falls"] is True
    assert median["backlog"]["speedup_2_over_1"] == 1.5


def test_a_median_curve_that_falls_more_than_5_percent_is_reported_as_falling() -> None:
    runs = [_run({"1": 100, "2": 150, "4": 142}, {"1": 100, "2": 130, "4": 140}),
            _run({"1": 100, "2": 150, "4": 140}, {"1": 100, "2": 130, "4": 140})]
    median = _median(runs)
    assert median["never_falls"] is False  # 141 < 0.95 x 150
    assert median["backlog"]["never_falls"] is True
    assert median["backlog"]["speedup_2_over_1"] == 1.3


def test_points_are_compared_in_worker_order_whatever_order_they_were_run_in() -> None:
    median = _median([_run({"4": 100, "2": 150, "1": 140}, {"1": 1, "2": 2, "4": 3})])
    assert median["never_falls"] is False  # 2 -> 4 workers: 150 -> 100


async def test_every_other_run_goes_from_the_most_workers_to_the_fewest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[tuple[int, bool]] = []

    async def throughput(engine: str, opts: Options, n: int, workers: int, *,
                         with_creation: bool, backlog: bool = False) -> dict[str, Any]:
        started.append((workers, backlog))
        return {"steps_per_s": 100.0 * workers + backlog, "create_phase_s": 0.1,
                "machine": {"busy_pct": 50.0 * workers + backlog}}

    monkeypatch.setattr(scale_out, "warren_throughput", throughput)
    first = await scale_out.run("warren", Options(run_index=0))
    assert [w for w, _ in started] == [1, 1, 2, 2, 4, 4]
    started.clear()
    second = await scale_out.run("warren", Options(run_index=1))
    assert [w for w, _ in started] == [4, 4, 2, 2, 1, 1]
    # Either way the curves are reported in worker order, with the same points.
    for result in (first, second):
        assert list(result["curve"]) == list(result["backlog"]["curve"]) == ["1", "2", "4"]
    assert first["backlog"]["curve"] == second["backlog"]["curve"] == {
        "1": 101.0, "2": 201.0, "4": 401.0}
    # ... and each point keeps its own machine reading.
    assert first["machine"] == second["machine"] == {
        str(w): {"busy_pct": 50.0 * w} for w in (1, 2, 4)}
    assert second["backlog"]["machine"]["4"] == {"busy_pct": 201.0}


def test_the_cli_tells_each_run_its_index() -> None:
    seen: list[int] = []

    async def runner(engine: str, opts: Options) -> dict[str, Any]:
        seen.append(opts.run_index)
        return {"instances": 1, "curve": {"1": 1.0}, "create_phase_s": {"1": 0.1},
                "backlog": {"curve": {"1": 1.0}}}

    scenario = SCENARIOS["scale-out"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(scenario), "runner", lambda self: runner)
        assert asyncio.run(_run_cli(scenario, ["warren"], Options(runs=3), False)) == 0
    assert seen == [0, 1, 2]


async def test_a_peer_runs_the_same_curve_with_as_many_worker_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, int, int, str]] = []

    async def throughput(engine: str, opts: Options, n: int) -> dict[str, Any]:
        seen.append((engine, opts.workers, opts.celery_concurrency, opts.dbos_mode))
        count = opts.workers if engine == "dbos" else opts.celery_concurrency
        return {"steps_per_s": 10.0 * count, "create_phase_s": 0.1,
                "machine": {"busy_pct": 20.0 * count}}

    monkeypatch.setattr(scale_out, "peer_throughput", throughput)
    dbos = await scale_out.run("dbos", Options(run_index=1, celery_concurrency=2))
    celery = await scale_out.run("celery", Options(run_index=0, workers=2))
    # DBOS scales by queue worker processes (queue mode), Celery by pool processes; the
    # order of the counts alternates as Warren's does.
    assert seen == [("dbos", 4, 2, "queue"), ("dbos", 2, 2, "queue"), ("dbos", 1, 2, "queue"),
                    ("celery", 2, 1, "auto"), ("celery", 2, 2, "auto"),
                    ("celery", 2, 4, "auto")]
    for result in (dbos, celery):
        assert result["curve"] == {"1": 10.0, "2": 20.0, "4": 40.0}
        assert result["machine"]["4"] == {"busy_pct": 80.0}
        assert "backlog" not in result
    # Its line is judged like Warren's burst curve.
    line = _line(SCENARIOS["scale-out"], "dbos", Options(runs=1), [dbos], {})
    assert line["median"]["speedup_2_over_1"] == 2.0 and line["median"]["never_falls"]


def test_scale_out_runs_dbos_only_in_queue_mode() -> None:
    with pytest.raises(ValueError, match="queue worker processes"):
        scale_out.peer_options("dbos", Options(dbos_mode="inprocess"), 2)
