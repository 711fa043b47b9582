"""The README's benchmark tables, from the JSON lines of a run: ``python -m benchmarks.table DIR``.

``DIR`` holds what the scenarios printed (``python -m benchmarks throughput --compare >
DIR/throughput.jsonl`` and so on; the file names do not matter, the lines say what they
are). Every figure is a median the run itself reported; the ratios are computed the way
``--compare`` computes them. A scenario without lines in ``DIR`` has no row.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks._report import lookup

PEERS = ("dbos", "celery")
MISSING = "\u2013"  # an en dash, as in the README's tables
TIMES = "\u00d7"
PEER_NAMES = {"dbos": "DBOS", "celery": "Celery"}


@dataclass(frozen=True)
class Line:
    """One engine's line of one invocation."""

    file: str
    scenario: str
    engine: str
    params: Mapping[str, Any]
    median: Mapping[str, Any]

    def get(self, path: str) -> float | None:
        return lookup(self.median, path)


def read_lines(directory: Path) -> list[Line]:
    """The engine lines (not the comparison lines) of every ``*.jsonl`` in ``directory``."""
    lines = []
    for path in sorted(directory.glob("*.jsonl")):
        for raw in path.read_bytes().splitlines():
            if not raw.strip():
                continue
            data = orjson.loads(raw)
            if "median" in data and "engine" in data:
                lines.append(Line(path.name, data["scenario"], data["engine"],
                                  data.get("params", {}), data["median"]))
    return lines


def _n(value: float | None, digits: int = 0) -> str:
    """A figure with thousands separators; an en dash when missing."""
    return MISSING if value is None else f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}{TIMES}"


def _one(lines: Sequence[Line], scenario: str, engine: str) -> Line | None:
    """``engine``'s line of ``scenario`` (the first file's, if several have one)."""
    found = [line for line in lines if line.scenario == scenario and line.engine == engine]
    return found[0] if found else None


def _ratio_text(warren: float | None, peers: Mapping[str, float | None]) -> str:
    """``Warren ÷ peer`` for each peer measured (above 1 is better for Warren where more
    is better, below 1 where less is)."""
    parts = []
    for peer, value in peers.items():
        if warren and value:
            parts.append(f"{warren / value:.2f}{TIMES} {PEER_NAMES[peer]}")
    return ", ".join(parts) if parts else ""


def peer_table(lines: Sequence[Line]) -> list[str]:
    """Scenario rows with Warren, DBOS and Celery side by side."""
    rows: list[tuple[str, str, dict[str, str], str]] = []

    def row(label: str, scenario: str, fmt: Callable[[Line], str],
            value: Callable[[Line], float | None] | None = None) -> None:
        warren = _one(lines, scenario, "warren")
        if warren is None:
            return
        peers = {p: line for p in PEERS if (line := _one(lines, scenario, p)) is not None}
        ratio = ""
        if value is not None:
            ratio = _ratio_text(value(warren), {p: value(line) for p, line in peers.items()})
        rows.append((label, fmt(warren), {p: fmt(line) for p, line in peers.items()}, ratio))

    row("throughput, steps/s (`throughput --compare`)", "throughput",
        lambda x: _n(x.get("steps_per_s")), lambda x: x.get("steps_per_s"))
    row("worker CPU per step, ms", "throughput",
        lambda x: _n(x.get("worker_cpu_ms_per_step"), 2))
    row("creation, instances/s: `create_batch` (peers: their bulk call)", "throughput",
        lambda x: _n(x.get("creation.create_batch_per_s")
                     or x.get("creation.create_single_per_s")),
        lambda x: x.get("creation.create_batch_per_s") or x.get("creation.create_single_per_s"))
    row("creation: single creates with 32 callers / one at a time", "throughput",
        lambda x: (f"{_n(x.get('creation.create_single_concurrent_per_s'))} / "
                   f"{_n(x.get('creation.create_single_per_s'))}")
        if x.get("creation.create_single_concurrent_per_s") is not None else MISSING)
    row("latency create→complete p50 / p99, ms (`latency --compare`)", "latency",
        lambda x: f"{_n(x.get('create_to_complete_ms.p50'), 1)} / "
                  f"{_n(x.get('create_to_complete_ms.p99'), 1)}",
        lambda x: x.get("create_to_complete_ms.p50"))
    row("latency create→first step p50 / p99, ms", "latency",
        lambda x: f"{_n(x.get('create_to_first_step_ms.p50'), 1)} / "
                  f"{_n(x.get('create_to_first_step_ms.p99'), 1)}",
        lambda x: x.get("create_to_first_step_ms.p50"))
    row("fan-out, 500 parallel steps, wall s (`fanout --compare --runs 1`)", "fanout",
        lambda x: _n(x.get("wall_s"), 2), lambda x: x.get("wall_s"))
    row("long history, ms/step at K = 10 / 100 / 1,000, and K1000 ÷ K10 "
        "(`long-history --compare --runs 1`)", "long-history",
        lambda x: (f"{_n(x.get('per_step_ms.10'), 1)} / {_n(x.get('per_step_ms.100'), 1)} / "
                   f"{_n(x.get('per_step_ms.1000'), 1)} ({_n(x.get('ratio'), 2)})"),
        lambda x: x.get("per_step_ms.1000"))
    row("scale-out, steps/s at 1 / 2 / 4 workers, created during the run; ratio at 2 "
        "(`scale-out --compare`; peers: DBOS queue workers, Celery pool processes)",
        "scale-out",
        lambda x: f"{_curve(x.median.get('curve', {}))} "
                  f"(2 ÷ 1 {_times(x.get('speedup_2_over_1'))})",
        lambda x: x.get("curve.2"))
    out = ["| scenario | Warren | DBOS | Celery | Warren ÷ peer |", "|---|---|---|---|---|"]
    for label, warren, peers, ratio in rows:
        out.append(f"| {label} | {warren} | {peers.get('dbos', MISSING)} | "
                   f"{peers.get('celery', MISSING)} | {ratio} |")
    return out


def _curve(points: Mapping[str, Any]) -> str:
    return " / ".join(_n(points[k]) for k in sorted(points, key=int))


def _judged_curve(part: Mapping[str, Any]) -> str:
    """A scale-out curve with its two verdicts."""
    never_falls = "yes" if part.get("never_falls") else "no"
    return (f"{_curve(part.get('curve', {}))} (2 ÷ 1 {_times(part.get('speedup_2_over_1'))}, "
            f"never falls: {never_falls})")


def warren_table(lines: Sequence[Line]) -> list[str]:
    """Rows of the scenarios only Warren runs (one per invocation of ``scale-out``)."""
    out = ["| scenario | result |", "|---|---|"]
    for line in (x for x in lines if x.scenario == "scale-out" and x.engine == "warren"):
        m, backlog = line.median, line.median.get("backlog", {})
        n = line.params.get("n") or m.get("instances")
        busy = " / ".join(f"{v['busy_pct']:.0f} %" for _, v in sorted(
            backlog.get("machine", {}).items(), key=lambda kv: int(kv[0])))
        out.append(
            f"| scale-out, steps/s at {' / '.join(sorted(m['curve'], key=int))} workers, "
            f"{_n(n)} instances (`{line.file}`) | created during the run: "
            f"{_judged_curve(m)}; backlog: {_judged_curve(backlog)}"
            + (f"; machine busy (backlog) {busy}" if busy else "") + " |")
    sleepers = _one(lines, "sleepers", "warren")
    if sleepers is not None:
        out.append(
            f"| sleepers (`sleepers --runs 1`) | early {_n(sleepers.get('early'))}; lateness "
            f"p50 {_n(sleepers.get('lateness_ms.p50'))} ms, p99 "
            f"{_n(sleepers.get('lateness_ms.p99'))} ms, max {_n(sleepers.get('lateness_ms.max'))}"
            f" ms; worker RSS with 1,000 and 20,000 asleep "
            f"{_n(sleepers.get('rss_mb.parked.at_1000'), 1)} / "
            f"{_n(sleepers.get('rss_mb.parked.at_20000'), 1)} MB "
            f"(growth {_n(sleepers.get('rss_mb.parked.growth_ratio'), 3)}) |")
    events = _one(lines, "events", "warren")
    if events is not None:
        out.append(
            f"| events (`events --runs 1`) | event → step start p50 "
            f"{_n(events.get('event_to_step_ms.p50'))} ms, p99 "
            f"{_n(events.get('event_to_step_ms.p99'))} ms (sent at "
            f"{_n(events.get('send_per_s'))}/s) |")
    embedded_tp = _one(lines, "throughput", "warren-embedded")
    embedded_lat = _one(lines, "latency", "warren-embedded")
    if embedded_tp is not None or embedded_lat is not None:
        parts = []
        if embedded_tp is not None:
            parts.append(f"{_n(embedded_tp.get('steps_per_s'))} steps/s, `create_batch` "
                         f"{_n(embedded_tp.get('creation.create_batch_per_s'))}/s")
        if embedded_lat is not None:
            parts.append(f"latency p50 {_n(embedded_lat.get('create_to_complete_ms.p50'), 1)}"
                         f" ms, first step "
                         f"{_n(embedded_lat.get('create_to_first_step_ms.p50'), 1)} ms")
        out.append(f"| embedded: memory broker + SQLite (`--engine warren-embedded`) | "
                   f"{'; '.join(parts)} |")
    return out


def tables(directory: Path) -> Iterator[str]:
    lines = read_lines(directory)
    if not lines:
        raise SystemExit(f"no benchmark lines in {directory}")
    yield from peer_table(lines)
    yield ""
    yield from warren_table(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table",
                                     description="Markdown tables of a run's JSON lines.")
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    sys.stdout.write("\n".join(tables(args.directory)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
