"""How busy the machine was during a run, and how much of it was someone else.

The load average is a poor witness here: the benchmark's own workers, PostgreSQL and
RabbitMQ raise it, and it decays over a minute, so the next run starts "loaded" by the
previous one. Instead every process's CPU time is read at the start and end of a run and
split into the benchmark's own processes (not reported: workers have exited by the end),
the shared services (PostgreSQL, RabbitMQ, which also serve anyone else using them) and
everything else (``foreign``: other test suites, builds), as a percentage of the machine's
capacity over the run. A run with a high ``foreign_cpu_pct`` was measured on a busy
machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import psutil

_RABBITMQ = frozenset({"beam.smp", "epmd", "erl_child_setup", "inet_gethost"})
_POSTGRESQL = "postgres"
SERVICES = _RABBITMQ | {_POSTGRESQL}


def _busy_pct(before: Any, after: Any) -> float:
    """The machine's busy share between two ``psutil.cpu_times()`` readings (iowait is idle)."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (
        before.idle + getattr(before, "iowait", 0.0))
    return round((1 - idle / total) * 100, 1) if total > 0 else 0.0


def _cpu_by_pid() -> dict[int, tuple[str, float, float]]:
    """``pid -> (name, CPU seconds so far, start time)``."""
    out: dict[int, tuple[str, float, float]] = {}
    for proc in psutil.process_iter(["name", "cpu_times", "create_time"]):
        times = proc.info["cpu_times"]
        if times is not None:
            out[proc.pid] = (proc.info["name"] or "", times.user + times.system,
                             proc.info["create_time"] or 0.0)
    return out


def _is_own(pid: int, me: int) -> bool:
    if pid == me:
        return True
    try:
        return any(p.pid == me for p in psutil.Process(pid).parents())
    except psutil.Error:
        return False


class LoadMeter:
    """Started at the beginning of a run; :meth:`stop` returns the summary."""

    def __init__(self) -> None:
        self._load_before = os.getloadavg()[0]
        self._system = psutil.cpu_times()
        self._procs = _cpu_by_pid()
        self._started = time.monotonic()
        self._started_wall = time.time()

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        cores = os.cpu_count() or 1
        system = psutil.cpu_times()
        me = os.getpid()
        split = {"own": 0.0, "services": 0.0, "foreign": 0.0}
        for pid, (name, cpu, created) in _cpu_by_pid().items():
            before = self._procs.get(pid)
            if before is not None and before[2] == created:
                used = cpu - before[1]
            elif created >= self._started_wall - 1:
                used = cpu  # started during the run
            else:
                continue  # not seen at the start (no access then): unknown share
            if used <= 0:
                continue
            kind = ("own" if _is_own(pid, me) else "services" if name in SERVICES
                    else "foreign")
            split[kind] += used

        def pct(seconds: float) -> float:
            return round(seconds / (elapsed * cores) * 100, 1)

        return {
            "load1_before": round(self._load_before, 2),
            "load1_after": round(os.getloadavg()[0], 2),
            "machine_busy_pct": _busy_pct(self._system, system),
            "services_cpu_pct": pct(split["services"]),
            "foreign_cpu_pct": pct(split["foreign"]),
        }


def _service_cpu() -> dict[str, float]:
    """CPU seconds so far of RabbitMQ's and PostgreSQL's processes."""
    out = {"rabbitmq": 0.0, "postgresql": 0.0}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        name, times = proc.info["name"], proc.info["cpu_times"]
        if times is None:
            continue
        kind = ("rabbitmq" if name in _RABBITMQ else "postgresql" if name == _POSTGRESQL
                else None)
        if kind is not None:
            out[kind] += times.user + times.system
    return out


class CpuWindow:
    """Where the machine's CPU went over part of a run: how busy the machine was, and the
    cores the workers, RabbitMQ, PostgreSQL and this process (the benchmark's client) used.

    On 2 cores this is what bounds ``scale-out``: a second worker can only add what one
    worker leaves idle, less what the services spend on its extra steps.
    """

    def __init__(self, worker_cpu: Callable[[], float]) -> None:
        self._worker_cpu = worker_cpu
        self._start = self._sample()

    def _sample(self) -> tuple[float, Any, float, dict[str, float], float]:
        own = psutil.Process().cpu_times()
        return (time.monotonic(), psutil.cpu_times(), self._worker_cpu(), _service_cpu(),
                own.user + own.system)

    def stop(self) -> dict[str, Any]:
        (t0, system0, workers0, services0, own0) = self._start
        (t1, system1, workers1, services1, own1) = self._sample()
        elapsed = max(t1 - t0, 1e-6)

        def cores(seconds: float) -> float:
            return round(seconds / elapsed, 2)

        return {
            "busy_pct": _busy_pct(system0, system1),
            "cores": {
                "workers": cores(workers1 - workers0),
                **{k: cores(services1[k] - services0[k]) for k in services0},
                "client": cores(own1 - own0),
            },
        }
