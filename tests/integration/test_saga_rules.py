"""The saga rules of tests/unit/test_saga.py, again on real stacks (RabbitMQ + PostgreSQL,
embedded + SQLite): same workflows, now through workers, messages and SQL."""

from __future__ import annotations

from tests.stacks import Stack
from tests.unit import test_saga as rules


async def test_handlers_run_in_reverse_start_order_including_the_failing_step(
    stack: Stack,
) -> None:
    rules.LOG.clear()
    async with stack.running([rules.ThreeHandlers]) as client:
        st = await (await client.workflow("three-handlers").create()).wait_for_status(
            "errored", timeout=30)
    assert st.error == {"name": "RuntimeError", "message": "three broke"}
    assert st.rollback == {"outcome": "complete", "error": None}
    assert [e[0] for e in rules.LOG] == ["three", "two", "one"]
    assert rules.LOG[0][1] is None and rules.LOG[1][1] == 2


async def test_parallel_steps_compensate_in_reverse_start_order(stack: Stack) -> None:
    rules.LOG.clear()
    async with stack.running([rules.Parallel]) as client:
        st = await (await client.workflow("parallel").create()).wait_for_status(
            "errored", timeout=30)
    x, y = (next(s for s in st.steps if s["name"] == n and s["type"] == "do") for n in "XY")
    assert x["end"] > y["end"]  # Y finished first...
    assert [e[0] for e in rules.LOG] == ["Y", "X"]  # ...and X started first


async def test_caught_error_followed_by_a_terminal_failure_compensates_both(
    stack: Stack,
) -> None:
    rules.LOG.clear()
    async with stack.running([rules.CaughtThenFatal]) as client:
        wf = client.workflow("caught-then-fatal")
        survived = await (await wf.create(params={})).wait_for_status("complete", 30)
        assert survived.rollback is None and rules.LOG == []
        fatal = await (await wf.create(params={"fatal": True})).wait_for_status("errored", 30)
    assert fatal.error == {"name": "RuntimeError", "message": "fatal later"}
    assert [e[0] for e in rules.LOG] == ["ok", "flaky"]


async def test_failing_handler_has_limit_plus_one_attempts_and_stops_the_rollback(
    stack: Stack,
) -> None:
    rules.LOG.clear()
    rules.ATTEMPTS.clear()
    async with stack.running([rules.BrokenHandler]) as client:
        st = await (await client.workflow("broken-handler").create()).wait_for_status(
            "errored", timeout=30)
    assert st.error == {"name": "RuntimeError", "message": "original"}
    assert st.rollback == {"outcome": "failed", "error": {
        "name": "ConnectionError", "message": "refund service down"}}
    handler = next(s for s in st.steps if s["type"] == "rollback" and s["name"] == "second")
    assert len(handler["attempts"]) == 3 and len(rules.ATTEMPTS) == 3
    assert [e[0] for e in rules.LOG] == ["third"]  # before it in rollback order: ran
    assert not any(s["type"] == "rollback" and s["name"] == "first" for s in st.steps)


async def test_an_instance_whose_handler_backs_off_is_waiting(stack: Stack) -> None:
    rules.SEEN_ERRORS.clear()
    async with stack.running([rules.RetriedHandler]) as client:
        inst = await client.workflow("retried-handler").create()
        # The handler's first attempt fails; its retry is 1 s away (API.md §6: waiting).
        backing_off = await inst.wait_for_status("waiting", timeout=30)
        handler = next(s for s in backing_off.steps if s["type"] == "rollback")
        assert handler["state"] == "backoff" and handler["wake_at"] is not None
        st = await inst.wait_for_status("errored", timeout=30)
    assert st.rollback == {"outcome": "complete", "error": None}
