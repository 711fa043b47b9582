"""Crash recovery and exactly-once step bodies with real worker processes (kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from tests.helpers import asyncpg_dsn, eventually
from tests.stacks import Stack

WORKFLOWS = str(Path(__file__).with_name("workflows.py"))


@contextmanager
def worker_processes(
    stack: Stack, effects: Path, count: int = 1, log: Path | None = None,
    heartbeat_timeout: float = 2.0,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes; a short heartbeat timeout makes crash recovery quick to observe."""
    env = {**os.environ, **stack.env, "WARREN_TEST_EFFECTS": str(effects),
           "WARREN_HEARTBEAT_TIMEOUT": str(heartbeat_timeout), "WARREN_SWEEP_INTERVAL": "0.2",
           "WARREN_LOG_LEVEL": "INFO" if log else "WARNING"}
    stderr = log.open("ab") if log else None
    procs = [subprocess.Popen([sys.executable, "-m", "engine._cli", "worker", WORKFLOWS],
                              env=env, stderr=stderr)
             for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def effects_of(path: Path) -> list[tuple[str, str, int, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        instance, step, attempt, phase = line.split(":")
        rows.append((instance, step, int(attempt), phase))
    return rows


async def test_kill_9_mid_step_second_worker_finishes(real_stack: Stack, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    async with real_stack.client() as client:
        with worker_processes(real_stack, effects) as (first,):
            inst = await client.workflow("crashy").create(id="crash-1")
            await eventually(lambda: ("crash-1", "s2", 1, "start") in effects_of(effects),
                             timeout=30, message="s2 attempt 1 started")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        with worker_processes(real_stack, effects):
            st = await inst.wait_for_status("complete", timeout=60)
    ran = Counter((step, attempt, phase) for _, step, attempt, phase in effects_of(effects))
    assert st.output == ["one", "two", "three"]
    assert ran[("s1", 1, "done")] == 1 and ran[("s3", 1, "done")] == 1  # never twice
    assert ran[("s2", 1, "start")] == 1 and ran[("s2", 1, "done")] == 0  # killed mid-step
    assert ran[("s2", 2, "done")] == 1  # re-run as a new attempt
    s2 = st.steps[1]
    assert [a["success"] for a in s2["attempts"]] == [False, True]
    assert s2["attempts"][0]["error"]["name"] == "WorkerLostError"


async def test_three_workers_run_every_step_body_exactly_once(
    real_stack: Stack, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.log"
    async with real_stack.client() as client:
        wf = client.workflow("five-steps")
        # No crash here: a heartbeat timeout long enough that load on two cores cannot make
        # a live attempt look lost (that would be a legitimate, but different, retry).
        with worker_processes(real_stack, effects, count=3, heartbeat_timeout=15):
            ids: list[str] = []
            for _ in range(2):
                ids += [i.id for i in await wf.create_batch([{"params": {}}] * 100)]
            dsn = asyncpg_dsn(real_stack.database_url)

            async def all_complete() -> bool:
                conn = await asyncpg.connect(dsn)
                try:
                    done = await conn.fetchval(
                        "SELECT count(*) FROM warren_instances "
                        "WHERE workflow = 'five-steps' AND status = 'complete'")
                finally:
                    await conn.close()
                return bool(done == 200)

            await eventually(all_complete, timeout=120, interval=0.5,
                             message="200 instances complete")
    ran = Counter((instance, step) for instance, step, _, _ in effects_of(effects))
    assert len(ran) == 200 * 5
    assert set(ran.values()) == {1}, [k for k, v in ran.items() if v != 1][:5]
    assert {i for i, _ in ran} == set(ids)


async def test_sigterm_stops_a_worker_cleanly(real_stack: Stack, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with worker_processes(real_stack, tmp_path / "e.log", log=log) as (proc,):
        await eventually(lambda: "worker started" in log.read_text(), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert "worker stopped" in log.read_text()


async def test_kill_9_during_rollback_second_worker_finishes_it(
    real_stack: Stack, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.log"
    async with real_stack.client() as client:
        with worker_processes(real_stack, effects) as (first,):
            inst = await client.workflow("saga-crash").create(id="saga-1")
            await eventually(lambda: ("saga-1", "undo-b", 0, "start") in effects_of(effects),
                             timeout=30, message="b's handler started")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        with worker_processes(real_stack, effects):
            st = await inst.wait_for_status("errored", timeout=60)
    ran = Counter((step, phase) for _, step, _, phase in effects_of(effects))
    assert st.error == {"name": "RuntimeError", "message": "d failed"}
    assert st.rollback == {"outcome": "complete", "error": None}
    # Forward steps and completed handlers ran exactly once; the interrupted handler ran
    # again (at-least-once) and finished once.
    assert ran[("a", "done")] == ran[("b", "done")] == ran[("c", "done")] == 1
    assert ran[("undo-c", "start")] == ran[("undo-c", "done")] == 1
    assert ran[("undo-b", "start")] == 2 and ran[("undo-b", "done")] == 1
    assert ran[("undo-a", "start")] == ran[("undo-a", "done")] == 1
    order = [step for _, step, _, phase in effects_of(effects) if phase == "done"]
    assert order[-3:] == ["undo-c", "undo-b", "undo-a"]


async def test_kill_9_with_slots_held_counts_recover_and_admission_goes_on(
    real_stack: Stack, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.log"
    async with real_stack.client() as client:
        wf = client.workflow("gated-crash")
        with worker_processes(real_stack, effects) as (first,):
            instances = await wf.create_batch([{"params": None}] * 8)
            await eventually(lambda: len(effects_of(effects)) == 3, timeout=30,
                             message="three instances running")

            async def three_running_five_queued() -> bool:  # every create has had its turn
                counts = await wf.counts()
                return (counts["running"], counts["queued"]) == (3, 5)

            await eventually(three_running_five_queued, timeout=20)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        peak = 0
        with worker_processes(real_stack, effects):
            async def all_done() -> bool:
                nonlocal peak
                peak = max(peak, (await wf.counts())["running"])
                states = [(await i.status()).status for i in instances]
                return all(s == "complete" for s in states)

            await eventually(all_done, timeout=90, interval=0.3, message="all 8 complete")
        final = await wf.counts()
    assert peak <= 3
    assert (final["running"], final["queued"]) == (0, 0)
    ran = Counter((i, attempt, phase) for i, _, attempt, phase in effects_of(effects))
    assert sum(1 for (_, _, phase) in ran if phase == "done") == 8
