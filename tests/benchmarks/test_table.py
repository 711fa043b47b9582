"""The README's benchmark tables are what ``python -m benchmarks.table`` makes of the run
they name, and the generator reads a run's lines right."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from benchmarks.table import tables

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- generated: python -m benchmarks\.table (\S+) -->\n")
END = "<!-- end generated -->"


def test_the_readme_tables_are_generated_from_the_run_they_name() -> None:
    readme = (REPO / "README.md").read_text()
    match = MARKER.search(readme)
    assert match, "README.md has no generated benchmark tables"
    shown = readme[match.end():readme.index(END, match.end())]
    assert shown == "\n".join(tables(REPO / match.group(1))) + "\n", (
        "README.md's tables differ from the run's: regenerate them with "
        f"python -m benchmarks.table {match.group(1)}")


def _line(scenario: str, engine: str, median: dict[str, Any], **params: Any) -> bytes:
    return orjson.dumps({"scenario": scenario, "engine": engine, "params": params,
                         "n_runs": 1, "median": median, "runs": [median]})


def test_rows_take_the_medians_and_ratios_of_the_lines(tmp_path: Path) -> None:
    (tmp_path / "tp.jsonl").write_bytes(b"\n".join([
        _line("throughput", "warren", {"steps_per_s": 3000.0, "worker_cpu_ms_per_step": 0.25,
                                       "creation": {"create_batch_per_s": 5000.0}}),
        _line("throughput", "dbos", {"steps_per_s": 250.0, "worker_cpu_ms_per_step": 4.0,
                                     "creation": {"create_batch_per_s": 500.0}}),
        orjson.dumps({"scenario": "throughput", "compare": "warren"}),  # not an engine line
    ]))
    (tmp_path / "lat.jsonl").write_bytes(
        _line("latency", "warren", {"create_to_complete_ms": {"p50": 9.0, "p99": 20.0},
                                    "create_to_first_step_ms": {"p50": 4.0, "p99": 7.0}}))
    (tmp_path / "so.jsonl").write_bytes(_line(
        "scale-out", "warren",
        {"instances": 2000, "curve": {"1": 1000.0, "2": 1400.0, "4": 1300.0},
         "speedup_2_over_1": 1.4, "never_falls": True,
         "backlog": {"curve": {"1": 1100.0, "2": 1500.0, "4": 1600.0},
                     "speedup_2_over_1": 1.364, "never_falls": True,
                     "machine": {"1": {"busy_pct": 70.0}, "2": {"busy_pct": 95.0},
                                 "4": {"busy_pct": 98.0}}}}, n=None) + b"\n" + _line(
        "scale-out", "dbos", {"instances": 2000, "curve": {"1": 100.0, "2": 175.0, "4": 200.0},
                              "speedup_2_over_1": 1.75, "never_falls": True}, n=None))
    out = "\n".join(tables(tmp_path))
    assert ("| throughput, steps/s (`throughput --compare`) | 3,000 | 250 | \u2013 | "
            "12.00\u00d7 DBOS |") in out
    assert "| 5,000 | 500 | \u2013 | 10.00\u00d7 DBOS |" in out
    assert "| 9.0 / 20.0 | \u2013 | \u2013 |  |" in out  # no peer latency: no ratio
    assert "1,000 / 1,400 / 1,300 (2 \u00f7 1 1.40\u00d7, never falls: yes)" in out
    assert "machine busy (backlog) 70 % / 95 % / 98 %" in out
    # The peers' curves stand beside Warren's burst curve, compared at 2 workers ...
    assert ("| 1,000 / 1,400 / 1,300 (2 \u00f7 1 1.40\u00d7) | 100 / 175 / 200 "
            "(2 \u00f7 1 1.75\u00d7) | \u2013 | 8.00\u00d7 DBOS |") in out
    # ... and have no row of Warren's own.
    assert out.count("(`so.jsonl`)") == 1
    assert "fan-out" not in out  # no lines, no row
