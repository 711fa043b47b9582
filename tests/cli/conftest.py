"""``warren`` as a user runs it: the installed executable, in subprocesses, against ``warren dev``.

The server is a real ``warren dev`` process on the embedded broker and a temporary SQLite
file, on a free port it picks itself (read from its banner), with a bearer token so every
CLI call also proves that ``WARREN_API_TOKEN`` is sent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

WARREN = str(Path(sys.executable).with_name("warren"))
REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = str(REPO / "tests" / "http" / "workflows.py")
TOKEN = "cli-test-token"

T = TypeVar("T")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``WARREN_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy (AssertionError counts as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last: {last!r}")
        time.sleep(0.1)


@dataclass
class DevServer:
    """A running ``warren dev`` subprocess."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for CLI calls against this server."""
        return clean_env(WARREN_API_URL=self.url, WARREN_API_TOKEN=TOKEN)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_dev(database: Path, workdir: Path, *modules: str) -> DevServer:
    """Start ``warren dev`` on ``database`` and wait for its banner."""
    env = clean_env(
        WARREN_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        WARREN_API_TOKEN=TOKEN,
        WARREN_SWEEP_INTERVAL="0.2",
    )
    return start_server(["dev", *(modules or [WORKFLOWS]), "--port", "0"], env, workdir)


def start_server(args: list[str], env: dict[str, str], workdir: Path) -> DevServer:
    """Start ``warren ARGS`` (``dev`` or ``api``) and wait for the API URL in its banner."""
    log = workdir / f"server-{time.monotonic_ns()}.log"
    banner = log.with_suffix(".out")
    with banner.open("wb") as out, log.open("wb") as err:
        proc = subprocess.Popen([WARREN, *args], env=env, cwd=workdir, stdout=out, stderr=err)

    def url() -> str | None:
        if proc.poll() is not None:
            raise RuntimeError(
                f"warren {args[0]} exited {proc.returncode}: {log.read_text()[-2000:]}"
            )
        match = re.search(r"^\s+API\s+(http://\S+)$", banner.read_text(), re.MULTILINE)
        return match.group(1) if match else None

    return DevServer(proc, wait_until(url, timeout=30, what=f"warren {args[0]} banner"), log)


def warren(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``warren`` executable."""
    return subprocess.run(
        [WARREN, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def warren_json(*args: str, env: dict[str, str]) -> Any:
    """Run a ``warren ... --json`` command that must succeed; its decoded output."""
    result = warren(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One ``warren dev`` for the module's tests (each test uses its own instance ids)."""
    workdir = tmp_path_factory.mktemp("dev")
    server = start_dev(workdir / "warren.db", workdir)
    yield server
    assert server.stop() == 0, server.log.read_text()[-2000:]
