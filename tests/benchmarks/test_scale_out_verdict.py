"""``scale-out`` judges its curves on the medians of the runs, as it reports them."""

from __future__ import annotations

from typing import Any

from benchmarks._cli import _line
from benchmarks._options import Options
from benchmarks.scenarios import SCENARIOS


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
