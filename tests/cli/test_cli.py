"""The ``warren`` executable against a running ``warren dev``, and ``warren run`` on its own."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from engine._gc import YOUNG_GENERATION_THRESHOLD
from engine._http._remote import ApiClient
from tests.cli.conftest import (
    REPO,
    TOKEN,
    WARREN,
    WORKFLOWS,
    DevServer,
    clean_env,
    start_dev,
    start_server,
    wait_until,
    warren,
    warren_json,
)
from tests.stacks import Stack


def _status(dev: DevServer, workflow: str, instance_id: str) -> dict[str, Any]:
    # Polled over HTTP directly: each `warren` process pays the engine's import time.
    api = ApiClient(dev.url, token=TOKEN)
    if instance_id == "latest":
        instance_id = api.latest_id(workflow)
    status: dict[str, Any] = api.describe(workflow, instance_id)
    return status


def _wait_status(
    dev: DevServer, workflow: str, instance_id: str, *wanted: str, timeout: float = 30
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = _status(dev, workflow, instance_id)
        return status if status["status"] in wanted else None

    return wait_until(reached, timeout, f"{workflow}/{instance_id} {wanted}")


def _words(line: str) -> list[str]:
    """The words of a table line without its status icon."""
    return [w for w in line.split() if w not in ("+", "✔")]


def _one_line_error(result: Any, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warren: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_trigger_then_describe_as_table_and_json(dev: DevServer) -> None:
    result = warren("trigger", "greet", '{"name": "ana"}', "--id", "cli-1", env=dev.env)
    assert result.returncode == 0, result.stderr
    assert "created instance cli-1 of greet" in result.stdout

    status = _wait_status(dev, "greet", "cli-1", "complete")
    assert status["output"]["greeting"] == "hello ana" and status["params"] == {"name": "ana"}
    assert [s["name"] for s in status["steps"]] == ["greet"]

    table = warren("instances", "describe", "greet", "cli-1", env=dev.env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "greet / cli-1"
    # Piped output has no colours; the icon is Unicode or ASCII depending on the encoding.
    assert any(_words(line) == ["status", "complete"] for line in lines), table.stdout
    header = next(line for line in lines if "STEP" in line)
    assert header.split() == ["STATUS", "STEP", "TYPE", "DURATION", "ATTEMPTS"]
    row = _words(lines[lines.index(header) + 1])
    assert row[:3] == ["succeeded", "greet", "do"] and row[-1] == "1"

    triggered = warren_json("trigger", "greet", "--id", "cli-1b", env=dev.env)
    assert triggered["id"] == "cli-1b" and triggered["params"] == {}


def test_dev_tunes_its_garbage_collector(dev: DevServer) -> None:
    assert warren("trigger", "collector", "--id", "gc-dev", env=dev.env).returncode == 0
    collector = _wait_status(dev, "collector", "gc-dev", "complete")["output"]
    assert collector["frozen"] > 0
    assert collector["young_threshold"] == YOUNG_GENERATION_THRESHOLD


def test_list_and_describe_latest(dev: DevServer) -> None:
    for instance_id in ("lst-1", "lst-2", "lst-3"):
        assert warren("trigger", "greet", "--id", instance_id, env=dev.env).returncode == 0
    latest = _wait_status(dev, "greet", "latest", "complete")
    assert latest["id"] == "lst-3"

    page = warren_json("instances", "list", "greet", "--limit", "2", env=dev.env)
    assert [i["id"] for i in page["items"]] == ["lst-3", "lst-2"] and page["next_cursor"]
    rest = warren_json("instances", "list", "greet", "--cursor", page["next_cursor"], env=dev.env)
    assert "lst-1" in [i["id"] for i in rest["items"]]

    table = warren("instances", "list", "greet", "--limit", "2", env=dev.env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:2] == ["STATUS", "ID"]
    assert "lst-3" in table.stdout and f"--cursor {page['next_cursor']}" in table.stdout
    assert "greet" in warren("workflows", env=dev.env).stdout.split()


def test_send_event_completes_a_waiting_instance(dev: DevServer) -> None:
    assert warren("trigger", "approval", "--id", "ev-1", env=dev.env).returncode == 0
    _wait_status(dev, "approval", "ev-1", "waiting")
    result = warren("send-event", "approval", "ev-1", "approval", '{"by": "lee"}', env=dev.env)
    assert result.returncode == 0, result.stderr
    assert "sent event 'approval'" in result.stdout
    done = _wait_status(dev, "approval", "ev-1", "complete")
    # For scripts: the API's answer.
    assert warren("trigger", "approval", "--id", "ev-2", env=dev.env).returncode == 0
    _wait_status(dev, "approval", "ev-2", "waiting")
    answer = warren_json("send-event", "approval", "ev-2", "approval", '"kim"', env=dev.env)
    assert answer == {"id": "ev-2", "workflow": "approval", "accepted": "event:approval"}
    assert _wait_status(dev, "approval", "ev-2", "complete")["output"] == {"approved_by": "kim"}
    assert done["output"] == {"approved_by": {"by": "lee"}}


def test_watch_follows_an_instance_until_it_finishes(dev: DevServer) -> None:
    assert (
        warren("trigger", "sleepy", '{"seconds": 5}', "--id", "watched", env=dev.env).returncode
        == 0
    )
    result = warren(
        "instances", "describe", "sleepy", "watched", "--watch", "--interval", "0.2", env=dev.env
    )
    assert result.returncode == 0, result.stderr
    renders = result.stdout.split("\n\nsleepy / watched")
    assert len(renders) >= 2, result.stdout  # redrawn as it changed
    assert "sleeping" in renders[0] and "nap" in renders[0]
    assert "complete" in renders[-1] and "after" in renders[-1]


def test_pause_resume_terminate_restart(dev: DevServer) -> None:
    assert (
        warren("trigger", "sleepy", '{"seconds": 600}', "--id", "ctl-1", env=dev.env).returncode
        == 0
    )
    _wait_status(dev, "sleepy", "ctl-1", "waiting")
    for action, wanted in [
        ("pause", ("paused",)),
        ("resume", ("waiting", "running")),
        ("terminate", ("terminated",)),
    ]:
        result = warren("instances", action, "sleepy", "ctl-1", env=dev.env)
        assert result.returncode == 0, result.stderr
        assert f"{action} requested for sleepy/ctl-1" in result.stdout
        _wait_status(dev, "sleepy", "ctl-1", *wanted)
    answer = warren_json("instances", "restart", "sleepy", "ctl-1", env=dev.env)
    assert answer == {"id": "ctl-1", "workflow": "sleepy", "accepted": "restart"}
    _wait_status(dev, "sleepy", "ctl-1", "waiting", "running", "queued")


def test_errors_are_one_line_and_a_nonzero_exit(dev: DevServer, tmp_path: Path) -> None:
    assert warren("trigger", "greet", "--id", "err-1", env=dev.env).returncode == 0
    _one_line_error(
        warren("trigger", "greet", "--id", "err-1", env=dev.env), 1, "already_exists", "err-1"
    )
    _one_line_error(
        warren("instances", "describe", "greet", "missing", env=dev.env), 1, "not_found"
    )
    _one_line_error(
        warren("instances", "pause", "greet", "err-1", env=dev.env), 1, "invalid_transition"
    )
    _one_line_error(warren("trigger", "greet", "{not json", env=dev.env), 2, "not valid JSON")
    _one_line_error(warren("send-event", "greet", "err-1", "bad type!", env=dev.env), 1, "invalid")
    wrong_token = {**dev.env, "WARREN_API_TOKEN": "nope"}
    _one_line_error(warren("instances", "list", "greet", env=wrong_token), 1, "unauthorized")
    no_token = clean_env(WARREN_API_URL=dev.url)
    _one_line_error(warren("trigger", "greet", env=no_token), 1, "unauthorized")
    nowhere = clean_env(WARREN_API_URL="http://127.0.0.1:9", WARREN_API_TOKEN=TOKEN)
    _one_line_error(
        warren("instances", "list", "greet", env=nowhere),
        1,
        "cannot reach the Warren API",
        "unreachable",
    )
    _one_line_error(
        warren("worker", str(tmp_path / "missing.py"), env=clean_env()), 1, "no such file"
    )
    _one_line_error(
        warren(
            "worker",
            str(REPO / "examples" / "order_processing.py"),
            "--workflows",
            "nope",
            env=clean_env(),
        ),
        1,
        "no workflow named nope",
    )
    _one_line_error(
        warren("worker", str(REPO / "examples" / "order_processing.py"),
               env=clean_env(WARREN_LIFECYCLE_EVENTS="steps")),
        1,
        "WARREN_LIFECYCLE_EVENTS",
        "all, instance, none",
    )
    usage = warren("instances", "describe", "greet", env=dev.env)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_run_first_command_on_a_bare_machine(tmp_path: Path) -> None:
    """The README's first command: no server, no RabbitMQ/PostgreSQL variables set."""
    result = warren(
        "run",
        str(REPO / "examples" / "order_processing.py"),
        env=clean_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "complete" in result.stdout
    for step in (
        "reserve inventory",
        "charge payment",
        "send confirmation email",
        "save to database",
    ):
        assert step in result.stdout
    assert "3 (2 failed)" in result.stdout  # the flaky payment was retried
    assert (tmp_path / "warren.db").exists()

    as_json = warren(
        "run",
        str(REPO / "examples" / "order_processing.py"),
        '{"order_id": "B-7"}',
        "--json",
        env=clean_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert as_json.returncode == 0, as_json.stderr
    status = orjson.loads(as_json.stdout)
    assert status["status"] == "complete" and status["output"]["order"]["order_id"] == "B-7"


def test_dev_killed_mid_sleep_resumes_after_restart(tmp_path: Path) -> None:
    database = tmp_path / "warren.db"
    first = start_dev(database, tmp_path)
    try:
        result = warren("trigger", "sleepy", '{"seconds": 3}', "--id", "survivor", env=first.env)
        assert result.returncode == 0, result.stderr
        _wait_status(first, "sleepy", "survivor", "waiting")
    finally:
        first.stop(signal.SIGKILL)
    assert first.proc.returncode == -signal.SIGKILL

    second = start_dev(database, tmp_path)
    try:
        done = _wait_status(second, "sleepy", "survivor", "complete", timeout=60)
    finally:
        assert second.stop() == 0
    assert done["output"] == ["before", "after"]
    before, nap, after = done["steps"]
    assert (before["name"], nap["name"], after["name"]) == ("before", "nap", "after")
    assert len(before["attempts"]) == 1  # not re-run after the crash
    assert nap["type"] == "sleep" and nap["success"] is True


def test_api_and_worker_processes_share_rabbitmq_and_postgres(
    real_stack: Stack, tmp_path: Path
) -> None:
    """The docker-compose topology without Docker: `warren worker` + `warren api` processes."""
    env = clean_env(**real_stack.env, WARREN_API_TOKEN=TOKEN, WARREN_SWEEP_INTERVAL="0.2")
    worker = subprocess.Popen(
        [WARREN, "worker", WORKFLOWS],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
    )
    api = start_server(["api", "--port", "0"], env, tmp_path)
    try:
        assert "postgresql+asyncpg://" in (api.log.with_suffix(".out")).read_text()
        assert warren("trigger", "approval", "--id", "split-1", env=api.env).returncode == 0
        _wait_status(api, "approval", "split-1", "waiting")
        result = warren("send-event", "approval", "split-1", "approval", '"ok"', env=api.env)
        assert result.returncode == 0, result.stderr
        done = _wait_status(api, "approval", "split-1", "complete")
        assert done["output"] == {"approved_by": "ok"}
        # The worker process froze its start-up objects and collects the young generation
        # less often (engine._gc): the workflow reads the collector of the process it runs in.
        assert warren("trigger", "collector", "--id", "gc-1", env=api.env).returncode == 0
        collector = _wait_status(api, "collector", "gc-1", "complete")["output"]
        assert collector["frozen"] > 0
        assert collector["young_threshold"] == YOUNG_GENERATION_THRESHOLD
    finally:
        assert api.stop() == 0
        worker.terminate()
        assert worker.wait(timeout=20) == 0


def test_the_cli_starts_without_the_database_and_broker_stacks() -> None:
    """HTTP-only commands (`warren instances list`, ...) must not pay for SQLAlchemy or
    aio-pika at start-up: the CLI module and the settings it reads import neither."""
    heavy = ("sqlalchemy", "sqlmodel", "asyncpg", "aiosqlite", "aio_pika", "aiormq")
    probe = ("import sys, engine._cli, engine._settings; "
             f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True, env=clean_env())
    assert result.stdout.strip() == ""


def test_a_workflow_module_that_fails_to_import_is_a_one_line_reason(tmp_path: Path) -> None:
    (tmp_path / "syntax.py").write_text("def broken(:\n")
    (tmp_path / "missing_dep.py").write_text("x = 1\nimport warren_no_such_dependency\n")
    (tmp_path / "bad_name.py").write_text(
        "from sdk import WorkflowEntrypoint\n\n"
        "class Bad(WorkflowEntrypoint):\n    name = 'no spaces allowed'\n")
    cases = {"syntax.py": "SyntaxError", "missing_dep.py": "missing_dep.py:2",
             "bad_name.py": "invalid workflow name 'no spaces allowed'",
             "no_such_file.py": "no such file",
             "warren_no_such_module": "No module named 'warren_no_such_module'"}
    for module, detail in cases.items():
        result = warren("worker", module, env=clean_env(), cwd=tmp_path, timeout=30)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("warren: ")
        if module != "no_such_file.py":
            assert lines[0].startswith(f"warren: cannot load workflows from {module}")
        assert detail in lines[0]
        if module == "bad_name.py":  # the user's line, not Warren's code that refused it
            assert lines[0].endswith(f"at {tmp_path / 'bad_name.py'}:3"), lines[0]
