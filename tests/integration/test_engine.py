"""Acceptance of the core engine (issue: durable steps on RabbitMQ + SQL, end to end)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
import structlog.testing

from broker import REASON_HEADER, OutgoingMessage, broker_from_url
from sdk import (
    InstanceExistsError,
    InstanceNotFoundError,
    NonRetryableError,
    StepFailedError,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
)
from tests.helpers import eventually
from tests.stacks import Stack

RUNS: Counter[str] = Counter()


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


class ThreeSteps(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        a = await step.do("fetch", lambda: RUNS.update(["fetch"]) or event.payload["x"])
        b = await step.do("double", lambda: RUNS.update(["double"]) or a * 2)

        async def store() -> dict[str, int]:
            RUNS.update(["store"])
            return {"stored": b}

        c = await step.do("store", store)
        return {"a": a, "b": b, "c": c}


async def test_three_step_workflow_completes_with_full_status(stack: Stack) -> None:
    RUNS.clear()
    async with stack.running([ThreeSteps]) as client:
        inst = await client.workflow("three-steps").create(params={"x": 21}, id="three-1")
        st = await inst.wait_for_status("complete", timeout=20)
    assert st.output == {"a": 21, "b": 42, "c": {"stored": 42}}
    assert [s["name"] for s in st.steps] == ["fetch", "double", "store"]
    assert [s["output"] for s in st.steps] == [21, 42, {"stored": 42}]
    assert all(s["type"] == "do" and s["success"] is True for s in st.steps)
    assert all(len(s["attempts"]) == 1 and s["attempts"][0]["success"] for s in st.steps)
    assert st.to_dict()["error"] is None and st.created and st.started and st.ended
    assert st.to_dict()["params"] == {"x": 21}
    # Completed steps never run again, although run() was replayed once per step.
    assert Counter({"fetch": 1, "double": 1, "store": 1}) == RUNS


class Flaky(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def flaky(ctx: Any) -> str:
            if ctx.attempt < 3:
                raise ConnectionError(f"attempt {ctx.attempt} failed")
            return "third time lucky"

        def never() -> None:
            raise NonRetryableError("card declined")

        def always() -> None:
            raise ValueError("still broken")

        result = await step.do("flaky", flaky,
                               retries={"limit": 4, "delay": "300 milliseconds",
                                        "backoff": "exponential"})
        try:
            await step.do("declined", never)
        except StepFailedError as exc:
            declined = exc.error_name
        try:
            await step.do("exhausted", always, retries={"limit": 1, "delay": 0.1})
        except StepFailedError as exc:
            exhausted = f"{exc.error_name}: {exc.error_message}"
        if event.payload.get("fail"):
            await step.do("fatal", always, retries={"limit": 0})
        return {"result": result, "declined": declined, "exhausted": exhausted}


async def test_retries_backoff_non_retryable_and_caught_failures(stack: Stack) -> None:
    async with stack.running([Flaky]) as client:
        wf = client.workflow("flaky")
        ok = await (await wf.create(params={})).wait_for_status("complete", timeout=20)
        failed = await (await wf.create(params={"fail": True})).wait_for_status(
            "errored", timeout=20)
    assert ok.output == {"result": "third time lucky", "declined": "NonRetryableError",
                         "exhausted": "ValueError: still broken"}
    flaky, declined, exhausted = ok.steps
    attempts = flaky["attempts"]
    assert [a["success"] for a in attempts] == [False, False, True]
    assert attempts[0]["error"]["name"] == "ConnectionError"
    # Backoff: 300 ms after the first failure, 600 ms after the second (exponential).
    gap1 = _parse(attempts[1]["start"]) - _parse(attempts[0]["end"])
    gap2 = _parse(attempts[2]["start"]) - _parse(attempts[1]["end"])
    # Lower bounds are the contract (never early); upper bounds only catch a wrong backoff
    # formula, with room for a loaded machine.
    assert timedelta(milliseconds=300) <= gap1 < timedelta(milliseconds=3000)
    assert timedelta(milliseconds=600) <= gap2 < timedelta(milliseconds=3300)
    assert gap2 > gap1
    assert len(declined["attempts"]) == 1 and declined["success"] is False
    assert len(exhausted["attempts"]) == 2
    assert failed.error == {"name": "ValueError", "message": "still broken"}


class Slow(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def slow_then_fast(ctx: Any) -> int:
            if ctx.attempt == 1:
                await asyncio.sleep(5)
            return ctx.attempt

        return await step.do("slow", slow_then_fast, timeout="300 milliseconds",
                             retries={"limit": 2, "delay": "100 milliseconds"})


async def test_step_over_its_timeout_fails_the_attempt_and_is_retried(stack: Stack) -> None:
    async with stack.running([Slow]) as client:
        st = await (await client.workflow("slow").create()).wait_for_status("complete", 20)
    assert st.output == 2
    first = st.steps[0]["attempts"][0]
    assert first["success"] is False and first["error"]["name"] == "StepTimeoutError"
    assert _parse(first["end"]) - _parse(first["start"]) < timedelta(seconds=3)


class Sleepy(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        began = await step.do("began", lambda: time.time())
        await step.sleep("nap", "2 seconds")
        woke = await step.do("woke", lambda: time.time())
        until = event.payload["until"]
        await step.sleep_until("alarm", until)
        rang = await step.do("rang", lambda: time.time())
        return {"began": began, "woke": woke, "until": until, "rang": rang}


async def test_sleeps_hold_no_resources_and_never_wake_early(stack: Stack) -> None:
    async with stack.worker([Sleepy]) as worker, stack.client() as client:
        until = time.time() + 3.0
        inst = await client.workflow("sleepy").create(params={"until": until})
        await inst.wait_for_status("waiting", timeout=10)
        # While it sleeps: no step task, nothing unacked, nothing queued in the worker.
        assert worker._runner.in_flight == 0
        assert len(worker._turns._intake) == 0
        assert await worker.broker.queue_depth("sleepy") == 0
        st = await inst.wait_for_status("complete", timeout=20)
        # The wake-ups came ahead of time and waited in the worker (engine._early_wake).
        assert worker._turns._early.held_total == 2
    out = st.output
    assert out["woke"] - out["began"] >= 2.0
    assert out["rang"] >= out["until"]
    nap = st.steps[1]
    assert nap["type"] == "sleep" and nap["success"] is True
    assert _parse(nap["end"]) - _parse(nap["start"]) >= timedelta(seconds=2)


class FanOut(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def work(i: int) -> int:
            await asyncio.sleep(0.5)
            return i

        results = await asyncio.gather(
            *(step.do(f"part-{i}", lambda i=i: work(i)) for i in range(10)))

        @step.do("left")
        async def left() -> str:
            return "L"

        @step.do("right")
        async def right() -> str:
            return "R"

        @step.do("both", depends=[right, left], concurrent=True)
        async def both(r: str, l_: str) -> str:
            return r + l_

        return {"parts": list(results), "both": await both()}


async def test_gather_runs_steps_concurrently_and_dag_passes_results(stack: Stack) -> None:
    async with stack.running([FanOut]) as client:
        started = time.monotonic()
        st = await (await client.workflow("fan-out").create()).wait_for_status("complete", 20)
        elapsed = time.monotonic() - started
    assert st.output == {"parts": list(range(10)), "both": "RL"}
    assert elapsed < 4.5, f"10 steps of 0.5 s took {elapsed:.1f}s: not concurrent"
    part_starts = sorted(_parse(s["start"]) for s in st.steps if s["name"].startswith("part-"))
    assert part_starts[-1] - part_starts[0] < timedelta(milliseconds=100)  # one turn


class Unique(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("echo", lambda: event.payload)


async def test_duplicate_create_yields_one_instance_and_visible_rejection(stack: Stack) -> None:
    async with stack.running([Unique]) as client:
        wf = client.workflow("unique")
        await wf.create(params={"n": 1}, id="only-once")
        with pytest.raises(InstanceExistsError, match="only-once"):
            await wf.create(params={"n": 2}, id="only-once")
        with pytest.raises(InstanceExistsError):
            await wf.create_batch([{"id": "b1"}, {"id": "b1"}])
        # The same id through the wire protocol, by a service that is not a Warren client.
        async with broker_from_url(stack.broker_url, stack.namespace) as raw:
            await raw.publish([OutgoingMessage(
                "create", "unique", orjson.dumps({"id": "only-once", "params": {"n": 3}}),
                message_id="someone-else")])
            dead = await raw.get_dead(timeout_s=10)  # type: ignore[attr-defined]
        assert dead is not None and "already exists" in str(dead.headers[REASON_HEADER])
        st = await (await wf.get("only-once")).wait_for_status("complete", timeout=10)
        assert st.output == {"n": 1}


class Changing(WorkflowEntrypoint):
    version = 1

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("charge", lambda: "charged")
        await step.sleep("wait", "1 second")
        if Changing.version == 1:
            await step.do("ship", lambda: "shipped")
        else:
            await step.do("refund", lambda: "refunded")
            await step.do("ship", lambda: "shipped")
        return "done"


async def test_changed_code_fails_instance_with_non_determinism_error(stack: Stack) -> None:
    Changing.version = 1
    async with stack.running([Changing]) as client:
        inst = await client.workflow("changing").create()
        await inst.wait_for_status("complete", timeout=20)
        Changing.version = 2
        await _restart_history(stack, inst.id)  # same history, replayed by the new code
        st = await inst.wait_for_status("errored", timeout=20)
    assert st.error is not None and st.error["name"] == "NonDeterminismError"
    assert "'ship'" in st.error["message"] or "'refund'" in st.error["message"]


async def _restart_history(stack: Stack, instance_id: str) -> None:
    """Put a finished instance back to running with its history intact, and poke it."""
    from broker import Envelope
    from engine._store._database import Database

    db = Database(stack.database_url)
    async with db.transaction() as conn:
        await conn.exec_driver_sql(
            "UPDATE warren_instances SET status = 'running', output = NULL, ended_at_ms = NULL "
            f"WHERE instance_id = '{instance_id}'")
    await db.close()
    async with broker_from_url(stack.broker_url, stack.namespace) as raw:
        await raw.publish([OutgoingMessage("internal", "changing",
                                           Envelope("wake", instance_id).encode())])


async def test_malformed_messages_are_dead_lettered_without_blocking(stack: Stack) -> None:
    async with stack.running([Unique]) as client:
        async with broker_from_url(stack.broker_url, stack.namespace) as raw:
            await raw.publish([
                OutgoingMessage("create", "unique", b"{not json"),
                OutgoingMessage("internal", "unique", b'{"v": 99, "kind": "wake"}'),
                OutgoingMessage("create", "unique", b'{"id": "bad id!", "params": 1}'),
                OutgoingMessage("create", "unique", b'{"id": "", "params": 1}'),
                OutgoingMessage("create", "unique", b'{"id": "good", "params": 7}',
                                message_id="m" * 255),  # longer than the store's column
            ])
            reasons = []
            for _ in range(4):
                dead = await raw.get_dead(timeout_s=10)  # type: ignore[attr-defined]
                assert dead is not None
                reasons.append(str(dead.headers[REASON_HEADER]))
        # The worker stores "good" (no client stored it) after dead-lettering the others.
        good = await eventually(lambda: _existing(client, "unique", "good"), timeout=10,
                                message="'good' stored")
        st = await good.wait_for_status("complete", 10)
    assert st.output == 7
    assert any("not JSON" in r for r in reasons)
    assert any("version" in r for r in reasons)
    assert sum("invalid instance id" in r for r in reasons) == 2


async def test_a_message_whose_data_the_database_refuses_is_dead_lettered_alone(
    stack: Stack, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch the database refuses is not requeued forever with every message in it."""
    from sqlalchemy.exc import DataError

    from engine import _turn_loop

    real = _turn_loop.create_from_message_txn

    async def refusing_poison(conn: Any, workflow: str, item: Any, now: int) -> str:
        if item.instance_id == "poison":  # as PostgreSQL refuses a value too long
            raise DataError("INSERT INTO warren_instances ...", {}, ValueError("too long"))
        return await real(conn, workflow, item, now)

    monkeypatch.setattr(_turn_loop, "create_from_message_txn", refusing_poison)
    # "bad id!" is dead-lettered while the batch is decoded, before the refusal: the
    # one-at-a-time retry must not handle it again.
    ids = ["fine-1", "bad id!", "fine-2", "poison", "fine-3", "fine-4"]
    with structlog.testing.capture_logs() as logs:
        async with stack.running([Unique]) as client:
            async with broker_from_url(stack.broker_url, stack.namespace) as raw:
                await raw.publish([OutgoingMessage("create", "unique",
                                                   orjson.dumps({"id": i, "params": i}))
                                   for i in ids])
                dead = [await raw.get_dead(timeout_s=10)  # type: ignore[attr-defined]
                        for _ in range(2)]
                assert all(d is not None for d in dead), "a bad message was not dead-lettered"
                reasons = {orjson.loads(d.body)["id"]: str(d.headers[REASON_HEADER])
                           for d in dead}
                assert "database refused" in reasons["poison"]
                assert "invalid instance id" in reasons["bad id!"]
                # and nothing more reaches the dead-letter queue
                assert await raw.get_dead(timeout_s=1) is None  # type: ignore[attr-defined]
            for i in ids:
                if i not in reasons:
                    inst = await eventually(lambda i=i: _existing(client, "unique", i),
                                            timeout=10, message=f"{i!r} stored")
                    assert (await inst.wait_for_status("complete", 10)).output == i
    failures = [e for e in logs if e.get("log_level") in ("error", "critical")]
    assert not failures, failures


async def test_a_refused_message_whose_dead_lettering_fails_comes_back(
    stack: Stack, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker failing the dead-letter of a refused message (a connection blip) neither
    loses the message nor the turn task that held it."""
    from sqlalchemy.exc import DataError

    from engine import _turn_loop

    real_create, real_reject = _turn_loop.create_from_message_txn, _turn_loop._reject
    blips = [ConnectionError("broker connection reset")]

    async def refusing_poison(conn: Any, workflow: str, item: Any, now: int) -> str:
        if item.instance_id == "poison":
            raise DataError("INSERT INTO warren_instances ...", {}, ValueError("too long"))
        return await real_create(conn, workflow, item, now)

    async def blipping_reject(delivery: Any, reason: str) -> None:
        if blips:
            raise blips.pop()
        await real_reject(delivery, reason)

    monkeypatch.setattr(_turn_loop, "create_from_message_txn", refusing_poison)
    monkeypatch.setattr(_turn_loop, "_reject", blipping_reject)
    async with stack.running([Unique], turn_parallelism=1) as client:  # one turn task
        async with broker_from_url(stack.broker_url, stack.namespace) as raw:
            await raw.publish([OutgoingMessage("create", "unique", b'{"id": "poison"}')])
            dead = await raw.get_dead(timeout_s=15)  # type: ignore[attr-defined]
        assert blips == [] and dead is not None, "the refused message was not dead-lettered"
        # The only turn task is still taking turns.
        st = await (await client.workflow("unique").create(params=3)).wait_for_status(
            "complete", 10)
    assert st.output == 3


async def test_refused_data_is_told_apart_from_an_unreachable_database(stack: Stack) -> None:
    """What makes a batch's messages be retried one by one, on each real database."""
    from engine._store._database import Database
    from engine._turn_loop import _refused_data

    refusals = []
    db = Database(stack.database_url)
    try:
        async with db.transaction() as conn:
            await conn.exec_driver_sql("CREATE TEMP TABLE refuse (v VARCHAR(3) UNIQUE)")
            await conn.exec_driver_sql("INSERT INTO refuse VALUES ('a')")
            for value in ("'a'", "'abcdef'"):  # a duplicate; too long (PostgreSQL only)
                try:
                    async with conn.begin_nested():
                        await conn.exec_driver_sql(f"INSERT INTO refuse VALUES ({value})")
                except Exception as exc:
                    refusals.append(exc)
    finally:
        await db.close()
    assert refusals and all(_refused_data(exc) for exc in refusals)
    assert len(refusals) == (2 if stack.database_url.startswith("postgresql") else 1)
    unreachable = Database("postgresql+asyncpg://nobody@127.0.0.1:9/none")
    try:
        with pytest.raises(Exception) as outage:
            async with unreachable.transaction():
                pass
    finally:
        await unreachable.close()
    assert not _refused_data(outage.value)


async def test_many_instances_complete_with_each_step_once(stack: Stack) -> None:
    RUNS.clear()
    async with stack.running([ThreeSteps]) as client:
        wf = client.workflow("three-steps")
        instances = []
        for chunk in range(3):
            instances += await wf.create_batch(
                [{"params": {"x": chunk * 100 + i}} for i in range(100)])
        for inst in instances:
            await inst.wait_for_status("complete", timeout=60)
    assert Counter({"fetch": 300, "double": 300, "store": 300}) == RUNS


async def test_store_survives_worker_restart_mid_sleep(stack: Stack) -> None:
    async with stack.running([Sleepy]) as client:
        inst = await client.workflow("sleepy").create(params={"until": time.time() + 2})
        await inst.wait_for_status("waiting", timeout=10)
    # Worker gone while the instance sleeps; a new one picks it up from SQL.
    async with stack.running([Sleepy]) as client:
        st = await (await client.workflow("sleepy").get(inst.id)).wait_for_status(
            "complete", timeout=20)
    assert st.output["woke"] - st.output["began"] >= 2.0


async def test_a_wake_up_held_at_a_graceful_stop_is_handed_to_the_next_worker(
        stack: Stack) -> None:
    async with stack.worker([Sleepy], wake_lead_s=5.0) as worker, stack.client() as client:
        inst = await client.workflow("sleepy").create(params={"until": 0})
        await eventually(lambda: len(worker._turns._early) == 1, timeout=10,
                         message="the nap's wake-up is held")
    # No sweeper that could re-issue it: only the handed-back message can wake the nap.
    async with stack.running([Sleepy], sweep_interval_s=3600) as client:
        st = await (await client.workflow("sleepy").get(inst.id)).wait_for_status(
            "complete", timeout=20)
    assert st.output["woke"] - st.output["began"] >= 2.0


async def test_status_of_unknown_instance_raises_not_found(stack: Stack) -> None:
    async with stack.client() as client:
        with pytest.raises(InstanceNotFoundError):
            await client.workflow("unique").get("nope")


async def test_eventually_helper_is_used(stack: Stack) -> None:
    # Guards the helper the suites rely on: a condition that turns true is awaited.
    flag = {"v": False}
    asyncio.get_running_loop().call_later(0.1, lambda: flag.update(v=True))
    assert await eventually(lambda: flag["v"], timeout=2)


class HugeError(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def explode() -> None:
            raise RuntimeError("x" * (3 * 1024 * 1024))

        await step.do("explode", explode, retries={"limit": 0})


async def test_an_error_too_big_to_store_fails_the_instance_instead_of_wedging_it(
    stack: Stack,
) -> None:
    async with stack.running([HugeError, Unique]) as client:
        st = await (await client.workflow("huge-error").create()).wait_for_status("errored", 20)
        # and the worker is still healthy for everyone else
        ok = await (await client.workflow("unique").create(params=1)).wait_for_status(
            "complete", 20)
    assert st.error is not None and st.error["name"] == "RuntimeError"
    assert len(st.error["message"]) < 20_000 and st.error["message"].endswith("(truncated)")
    assert ok.output == 1


async def test_create_claiming_a_stored_row_that_does_not_exist_is_dead_lettered(
    stack: Stack,
) -> None:
    from broker import STORED_HEADER

    async with stack.running([Unique]), broker_from_url(stack.broker_url,
                                                        stack.namespace) as raw:
        await raw.publish([OutgoingMessage(
            "create", "unique", b'{"id": "phantom", "params": 1}',
            headers={STORED_HEADER: "1"})])
        dead = await raw.get_dead(timeout_s=10)  # type: ignore[attr-defined]
    assert dead is not None and "no such instance" in str(dead.headers[REASON_HEADER])


async def test_a_claimed_create_without_an_id_is_dead_lettered_not_lost(stack: Stack) -> None:
    from broker import STORED_HEADER

    async with stack.running([Unique]), broker_from_url(stack.broker_url,
                                                        stack.namespace) as raw:
        await raw.publish([OutgoingMessage("create", "unique", b'{"params": 3}',
                                           message_id="claimed-3",
                                           headers={STORED_HEADER: "1"})])
        dead = await raw.get_dead(timeout_s=10)  # type: ignore[attr-defined]
    assert dead is not None and "no such instance" in str(dead.headers[REASON_HEADER])
    assert dead.body == b'{"params": 3}'


async def test_wire_creates_keep_what_was_sent_or_refuse_it(stack: Stack) -> None:
    """A message id that is no valid instance id still names the generated instance (by
    its hash); an id ending in a newline and an integer JSON from Warren's client could
    not carry are refused, not stored changed."""
    async with stack.running([Unique]) as client:
        async with broker_from_url(stack.broker_url, stack.namespace) as raw:
            await raw.publish([
                OutgoingMessage("create", "unique", b'{"id": "nl\\n", "params": 1}'),
                OutgoingMessage("create", "unique",
                                b'{"id": "big", "params": {"n": 123456789012345678901234567890}}'),
                OutgoingMessage("create", "unique", b'{"params": {"n": 18446744073709551615}}',
                                message_id="order:42"),
            ])
            reasons = []
            for _ in range(2):
                dead = await raw.get_dead(timeout_s=10)  # type: ignore[attr-defined]
                assert dead is not None
                reasons.append(str(dead.headers[REASON_HEADER]))
        assert any("invalid instance id 'nl\\n'" in r for r in reasons), reasons
        assert any("outside the 64-bit range" in r for r in reasons), reasons
        page = await eventually(
            lambda: _listed(client, "unique", "complete"), timeout=10,
            message="the create without an id completed")
    (only,) = page
    assert only.output == {"n": 18446744073709551615}  # exact, not a float
    assert len(only.id) == 32 and only.id != "order:42"


async def _listed(client: Any, workflow: str, status: str) -> list[Any] | None:
    page = await client.workflow(workflow).list(status=status)
    return page.items or None


async def test_finished_instances_are_deleted_after_the_retention_period(stack: Stack) -> None:
    async with stack.running([Unique], retention_days=1 / 86_400) as client:  # one second
        wf = client.workflow("unique")
        inst = await wf.create(params="short-lived")
        await inst.wait_for_status("complete", timeout=10)

        async def gone() -> bool:
            try:
                await inst.status()
            except InstanceNotFoundError:
                return True
            return False

        await eventually(gone, timeout=15, interval=0.2, message="instance deleted")


async def _existing(client: Any, workflow: str, instance_id: str) -> Any:
    """The instance if it exists yet, else ``None``."""
    try:
        return await client.workflow(workflow).get(instance_id)
    except InstanceNotFoundError:
        return None
