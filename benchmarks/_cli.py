"""``python -m benchmarks <scenario> [--engine E] [--compare] [--n N] [--runs R] [--smoke]``.

Runs a scenario ``--runs`` times per engine, each run on fresh, isolated services, and
prints one JSON line per engine (medians + every run), then with ``--compare`` a line of
Warren/peer ratios. Exit status is non-zero if any engine failed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks._isolation import Services
from benchmarks._load import LoadMeter
from benchmarks._options import Options
from benchmarks._report import comparison, emit, host, now_iso
from benchmarks._stats import median_of_runs
from benchmarks.scenarios import PEERS, SCENARIOS, Scenario

log = logging.getLogger("benchmarks")

Runner = Callable[[str, Options], Awaitable[dict[str, Any]]]

PEER_PACKAGES = {"dbos": "dbos", "celery": "celery"}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, float]:
    low, high = (float(x) for x in text.split(","))
    return low, high


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Warren benchmarks; one JSON line per engine on stdout.",
        epilog="scenarios: " + "; ".join(f"{s.name}: {s.summary}" for s in SCENARIOS.values()),
    )
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--engine", choices=["warren", "warren-embedded", *PEERS], default="warren")
    p.add_argument("--compare", action="store_true",
                   help="run Warren and every peer the scenario supports, then print ratios")
    p.add_argument("--n", type=int, default=None, help="scenario size (default per scenario)")
    p.add_argument("--runs", type=int, default=None, help="runs per engine (default 3)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    p.add_argument("--workers", type=int, default=2, help="Warren worker processes")
    p.add_argument("--poll-ms", type=float, default=2.0, help="completion poll interval")
    p.add_argument("--max-delay", type=float, default=None, help="delay: longest sleep (s)")
    p.add_argument("--sleep-range", type=_floats, default=None,
                   help="sleepers: 'MIN,MAX' seconds (default 1,20)")
    p.add_argument("--ks", type=_ints, default=None,
                   help="long-history: e.g. 10,100,1000 (the default); --n N times K=N alone")
    p.add_argument("--worker-counts", type=_ints, default=None,
                   help="scale-out: e.g. 1,2,4 (the default)")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="admission: the workflow's concurrency limit (default 100)")
    p.add_argument("--dbos-mode", choices=["auto", "queue", "inprocess"], default="auto")
    p.add_argument("--celery-concurrency", type=int, default=2)
    p.add_argument("--celery-prefetch", type=int, default=64)
    p.add_argument("--keep-logs", action="store_true", help="keep worker logs and SQLite files")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return p


def options_from(args: argparse.Namespace, log_dir: Path) -> Options:
    smoke = bool(args.smoke)
    opts = Options(
        n=args.n, runs=args.runs or (1 if smoke else 3), smoke=smoke, workers=args.workers,
        poll_s=args.poll_ms / 1000, dbos_mode=args.dbos_mode,
        celery_concurrency=args.celery_concurrency, celery_prefetch=args.celery_prefetch,
        services=Services.from_env(), log_dir=log_dir,
    )
    if smoke:
        opts = replace(opts, max_delay_s=2.0, sleep_range_s=(0.5, 2.0), ks=(5, 20),
                       worker_counts=(1, 2), max_concurrency=10)
    if args.max_delay is not None:
        opts = replace(opts, max_delay_s=args.max_delay)
    if args.sleep_range is not None:
        opts = replace(opts, sleep_range_s=args.sleep_range)
    if args.ks is not None:
        opts = replace(opts, ks=args.ks)
    if args.worker_counts is not None:
        opts = replace(opts, worker_counts=args.worker_counts)
    if args.max_concurrency is not None:
        opts = replace(opts, max_concurrency=args.max_concurrency)
    return opts


def params(opts: Options) -> dict[str, Any]:
    return {"n": opts.n, "runs": opts.runs, "smoke": opts.smoke, "workers": opts.workers,
            "poll_ms": opts.poll_s * 1000, "max_delay_s": opts.max_delay_s,
            "sleep_range_s": list(opts.sleep_range_s), "ks": list(opts.ks),
            "worker_counts": list(opts.worker_counts), "max_concurrency": opts.max_concurrency,
            "dbos_mode": opts.dbos_mode,
            "celery_concurrency": opts.celery_concurrency,
            "celery_prefetch": opts.celery_prefetch,
            # Inherited by Warren's client and workers (README, Configuration).
            "warren_lifecycle_events": os.environ.get("WARREN_LIFECYCLE_EVENTS") or "all"}


def _missing_package(engine: str) -> str | None:
    package = PEER_PACKAGES.get(engine)
    if package and importlib.util.find_spec(package) is None:
        return f"{package} is not installed: pip install -e '.[bench]'"
    return None


async def _one_run(runner: Runner, engine: str, opts: Options) -> dict[str, Any]:
    """One run, with how busy the machine was meanwhile (other work skews every figure)."""
    meter, started = LoadMeter(), time.monotonic()
    result = await runner(engine, opts)
    result["load"] = meter.stop()
    result["run_s"] = round(time.monotonic() - started, 1)
    return result


def _line(scenario: Scenario, engine: str, opts: Options, runs: list[dict[str, Any]],
          problem: dict[str, str]) -> dict[str, Any]:
    line: dict[str, Any] = {"scenario": scenario.name, "engine": engine, "date": now_iso()}
    if "error" in problem:
        return {**line, "error": problem["error"]}
    line |= {"params": params(opts), "host": host(), "n_runs": len(runs),
             "median": scenario.derived(median_of_runs(runs)), "runs": runs}
    if "reason" in problem:
        line |= {"available": False, "reason": problem["reason"]}
    return line


async def run(scenario: Scenario, engines: Sequence[str], opts: Options, compare: bool
              ) -> int:
    """Run every engine ``opts.runs`` times, round-robin (run 1 of each engine, then run 2
    of each...), so that a change in the machine's load during the invocation hits every
    engine alike; then print one line per engine and, with ``compare``, the ratios."""
    runner = scenario.runner()
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    problems: dict[str, dict[str, str]] = {}
    for engine in engines:
        reason = _missing_package(engine)
        if reason:
            problems[engine] = {"reason": reason}
    for i in range(opts.runs):
        for engine in engines:
            if engine in problems:
                continue
            log.info("%s on %s: run %d/%d", scenario.name, engine, i + 1, opts.runs)
            try:
                result = await _one_run(runner, engine, replace(opts, run_index=i))
            except Exception as exc:
                log.exception("%s on %s failed", scenario.name, engine)
                problems[engine] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                continue
            runs[engine].append(result)
            if result.get("available") is False:
                problems[engine] = {"reason": str(result.get("reason"))}
    lines = {e: _line(scenario, e, opts, runs[e], problems.get(e, {})) for e in engines}
    for line in lines.values():
        emit(line)
    usable = {e: line for e, line in lines.items() if "error" not in line
              and line.get("available") is not False}
    if compare and "warren" in usable:
        peers = [usable[e] for e in engines if e in PEERS and e in usable]
        emit(comparison(scenario.name, usable["warren"], peers, scenario.headline))
    return 1 if any("error" in p for p in problems.values()) else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    from engine._logging import configure_logging
    configure_logging("WARNING")  # the in-process (embedded) engine logs to stderr only
    # SIGTERM unwinds like Ctrl-C, so databases, vhosts and workers are cleaned up.
    signal.signal(signal.SIGTERM, _interrupt)
    scenario = SCENARIOS[args.scenario]
    engines = ["warren", *[p for p in PEERS if p in scenario.engines]] if args.compare \
        else [args.engine]
    unsupported = [e for e in engines if e not in scenario.engines]
    if unsupported:
        print(f"benchmarks: {scenario.name} does not run on {', '.join(unsupported)} "
              f"(supported: {', '.join(scenario.engines)})", file=sys.stderr)
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="warren-bench-"))
    code = 1
    try:
        code = asyncio.run(run(scenario, engines, options_from(args, log_dir), args.compare))
    finally:
        if args.keep_logs or code != 0:
            print(f"benchmarks: logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return code
