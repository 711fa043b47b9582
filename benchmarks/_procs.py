"""Worker processes of the engine under test: start, wait until ready, measure RSS, stop.

Workers run as separate processes (as in production) so that the client driving the
benchmark does not share their CPU time or GIL. Their output goes to a log file per
process; a worker that dies makes the run fail with the tail of its log, instead of the
benchmark waiting for completions that will never come.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1


class WorkerDied(RuntimeError):
    """A worker process exited while the benchmark still needed it."""


@dataclass
class ProcessGroup:
    """Processes of one kind (e.g. two Warren workers) with their log files."""

    name: str
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(3))

    def start(self, argv: Sequence[str], env: Mapping[str, str], count: int = 1) -> None:
        """Start ``count`` copies of ``argv`` (run from the repository root)."""
        full_env = {**os.environ, **env}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        for _ in range(count):
            # Unique per group: a marker left in an older log must not look like readiness.
            log_path = self.log_dir / f"{self.name}-{self.token}-{len(self.procs)}.log"
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    list(argv), env=full_env, cwd=REPO_ROOT, stdout=log_file,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            self.procs.append(proc)
            self.logs.append(log_path)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        """Raise :class:`WorkerDied` (with the log tail) if any process has exited."""
        for proc, log_path in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise WorkerDied(
                    f"{self.name} process {proc.pid} exited with {proc.returncode}; "
                    f"log tail:\n{tail(log_path)}"
                )

    async def wait_ready(self, marker: str, limit_s: float = 60.0) -> None:
        """Wait until every process's log contains ``marker``."""
        deadline = time.monotonic() + limit_s
        pending = list(self.logs)
        while pending:
            self.check_alive()
            pending = [p for p in pending if marker not in _read(p)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} not ready after {limit_s}s; log tail:\n{tail(pending[0])}"
                )
            await asyncio.sleep(0.1)

    def rss_bytes(self) -> int:
        """Resident memory of the processes and their children (e.g. Celery's pool)."""
        total = 0
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                total += proc.memory_info().rss
                for child in proc.children(recursive=True):
                    total += child.memory_info().rss
            except psutil.Error:
                continue
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the processes and their children."""
        total = 0.0
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    t = p.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                continue
        return total

    def stop(self, limit_s: float = 20.0) -> None:
        """SIGTERM every process, then SIGKILL what is still alive after ``limit_s``."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + limit_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)
                proc.wait()
        self.procs.clear()
        self.logs.clear()


def _die_with_parent() -> None:
    """In the child (Linux): get SIGTERM when the benchmark dies, even by SIGKILL, so no
    orphaned worker keeps loading the machine and skewing the next measurement."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        for child in parent.children(recursive=True):
            child.kill()
        parent.kill()
    except psutil.Error:
        pass


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file."""
    return "\n".join(_read(path).splitlines()[-lines:])


def python() -> str:
    """The interpreter running the benchmark (workers use the same environment)."""
    return sys.executable
