"""``CpuWindow`` attributes the machine's CPU to the workers, the services and the client."""

from __future__ import annotations

import time

from benchmarks._load import CpuWindow


def test_cpu_window_splits_cores_by_who_used_them() -> None:
    worker_seconds = iter([10.0, 10.6])  # what the worker processes used: 0.6 s in between
    window = CpuWindow(lambda: next(worker_seconds))
    started = time.monotonic()
    while time.monotonic() - started < 0.3:  # the client (this process) busy all along
        sum(range(1000))
    machine = window.stop()
    elapsed = time.monotonic() - started
    cores = machine["cores"]
    assert set(cores) == {"workers", "rabbitmq", "postgresql", "client"}
    assert 0.6 / (elapsed + 0.05) <= cores["workers"] <= 0.6 / 0.3 + 0.01
    assert cores["client"] >= 0.5  # this process spun for the whole window
    assert machine["busy_pct"] >= 100 * cores["client"] / 2 * 0.5  # 2 cores here at most
    assert all(v >= 0 for v in cores.values())
