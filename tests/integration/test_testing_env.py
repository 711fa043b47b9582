"""``sdk.testing``: a workflow tested in process, with its steps, events and sleeps mocked.

The environment is the embedded engine by default (memory broker, SQLite in a temporary
directory), or the services it is given: the doubles are checked on both stacks, since
they act on real turns, not on a simulation of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

import sdk.testing
from engine import _clock, _test_doubles
from sdk import NonRetryableError, Subscription, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from sdk.errors import StepFailedError, ValidationError, WorkflowTimeoutError
from sdk.testing import WorkflowTestEnv
from tests.stacks import Stack

CALLS: list[str] = []  # bodies that really ran


class Moderate(WorkflowEntrypoint):
    name = "moderate"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def scan() -> dict[str, int]:
            CALLS.append("scan")
            return {"score": 99}

        async def publish() -> str:
            CALLS.append("publish")
            return "published"

        scan_result = await step.do("AI content scan", scan)
        await step.sleep("cool off", "3 days")
        try:
            approval = await step.wait_for_event("approval", "approval", timeout="1 day")
            decision = approval.payload["action"]
        except WorkflowTimeoutError:
            decision = "timed out"
        published = await step.do("publish", publish,
                                  retries={"limit": 3, "delay": "1 second", "backoff": "constant"})
        return {"score": scan_result["score"], "decision": decision, "published": published}


def _env(stack: Stack, workflow: type[WorkflowEntrypoint] = Moderate) -> WorkflowTestEnv:
    if stack.name == "memory-sqlite":
        return WorkflowTestEnv(workflows=[workflow])  # its own broker and store
    return WorkflowTestEnv(workflows=[workflow], broker_url=stack.broker_url,
                           database_url=stack.database_url, namespace=stack.namespace)


async def test_the_contract_example_runs_with_its_doubles(stack: Stack) -> None:
    CALLS.clear()
    async with _env(stack) as env:
        async with env.introspect("moderate", "inst-1") as i:
            await i.mock_step_result("AI content scan", {"score": 50})
            await i.mock_step_error("publish", RuntimeError("down"), times=2)
            await i.mock_event("approval", {"action": "approved"})
            await i.disable_sleeps()
        await env.client.workflow("moderate").create(id="inst-1", params={})
        assert await i.wait_for_step_result("AI content scan") == {"score": 50}
        status = await i.wait_for_status("complete", timeout=20)
        assert status.output == {"score": 50, "decision": "approved", "published": "published"}
        attempts = next(s for s in status.to_dict()["steps"] if s["name"] == "publish")["attempts"]
        assert [a["success"] for a in attempts] == [False, False, True]  # two mocked failures
        assert CALLS == ["publish"]  # the scan's body never ran; publish's third attempt did


async def test_forced_timeouts_and_doubles_for_every_instance(stack: Stack) -> None:
    async with _env(stack) as env:
        every = env.introspect_all("moderate")
        await every.disable_sleeps()
        await every.force_event_timeout("approval")
        await every.mock_step_error("publish", NonRetryableError("refused"))
        await env.client.workflow("moderate").create(id="a", params={})
        await env.client.workflow("moderate").create(id="b", params={})
        for instance_id in ("a", "b"):
            i = env.introspect("moderate", instance_id)
            with pytest.raises(StepFailedError, match="refused"):
                await i.wait_for_step_result("publish")
            status = await i.wait_for_status("errored", timeout=20)
            approval = next(s for s in status.to_dict()["steps"] if s["name"] == "approval")
            assert approval["success"] is False  # timed out at once, not after a day
        with pytest.raises(ValidationError, match="introspect"):
            await every.wait_for_status("complete")


async def test_a_step_timeout_is_retried_then_fails_the_step() -> None:
    async with WorkflowTestEnv(workflows=[Moderate]) as env:
        i = env.introspect("moderate", "slow")
        await i.disable_sleeps()
        await i.mock_event("approval", {"action": "approved"})
        await i.force_step_timeout("publish")
        await env.client.workflow("moderate").create(id="slow", params={})
        status = await i.wait_for_status("errored", timeout=30)
        publish = next(s for s in status.to_dict()["steps"] if s["name"] == "publish")
        assert len(publish["attempts"]) == 4  # limit 3: four attempts, each timed out
        assert {a["error"]["name"] for a in publish["attempts"]} == {"StepTimeoutError"}


async def test_an_event_mocked_after_the_instance_started_is_sent_at_once() -> None:
    async with WorkflowTestEnv(workflows=[Moderate]) as env:
        i = env.introspect("moderate", "late")
        await i.disable_sleeps()
        await env.client.workflow("moderate").create(id="late", params={})
        await i.wait_for_status("waiting")  # at the wait, with no event yet
        await i.mock_event("approval", {"action": "late"})
        status = await i.wait_for_status("complete")
        assert status.output["decision"] == "late"


async def test_each_environment_is_isolated_and_cleaned_up(tmp_path: Path) -> None:
    async with WorkflowTestEnv(workflows=[Moderate]) as env:
        directory = env._dir
        assert directory is not None and directory.exists()
        assert _test_doubles.active is not None
        with pytest.raises(RuntimeError, match="another WorkflowTestEnv"):
            async with WorkflowTestEnv(workflows=[Moderate]):
                pass
        await env.introspect("moderate", "x").disable_sleeps()
    assert _test_doubles.active is None and not directory.exists()
    async with WorkflowTestEnv(workflows=[Moderate]) as env:
        # Nothing of the first environment is here: neither its doubles nor its instances.
        assert _test_doubles.active is not None and not _test_doubles.active.no_sleeps
        assert (await env.client.workflow("moderate").list()).items == []


def test_the_module_exports_the_environment() -> None:
    assert sorted(sdk.testing.__all__) == [
        "InstanceIntrospector", "VirtualClock", "WorkflowTestEnv"]


REFUNDS: list[str] = []


class Transfer(WorkflowEntrypoint):
    name = "transfer"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.do("debit")
        async def debit() -> str:
            return "debited"

        @debit.rollback
        async def refund(ctx: Any) -> None:
            REFUNDS.append(str(ctx.output))

        await debit()
        first = await step.do("fetch", _fetch)  # default retries: 10 s, then 20 s
        second = await step.do("fetch", _fetch)
        received = await step.wait_for_event("go", "go", timeout="1 hour")
        if event.payload.get("fail"):
            await step.do("credit", _fail, retries={"limit": 0})
        return [first, second, received.payload]


async def _fetch() -> str:
    return "real"


async def _fail() -> None:
    raise NonRetryableError("credit refused")


async def test_a_mocked_step_keeps_its_rollback(stack: Stack) -> None:
    REFUNDS.clear()
    async with _env(stack, Transfer) as env:
        i = env.introspect("transfer", "t-1")
        await i.mock_step_result("debit", "mocked debit")
        await i.mock_event("go", "now")
        await env.client.workflow("transfer").create(id="t-1", params={"fail": True})
        status = await i.wait_for_status("errored")
        assert status.to_dict()["rollback"]["outcome"] == "complete"
        assert REFUNDS == ["mocked debit"]  # the handler ran, with the mocked output


async def test_doubles_combine_by_attempt_and_occurrence_and_skip_retry_delays() -> None:
    async with WorkflowTestEnv(workflows=[Transfer], timeout=10) as env:
        i = env.introspect("transfer", "t-2")
        # Registered in either order: the failures come first, then the result. Only the
        # second "fetch" is mocked; its default retry delays (10 s, 20 s) are skipped.
        await i.mock_step_result("fetch", "mocked", occurrence=2)
        await i.mock_step_error("fetch", RuntimeError("flaky"), times=2, occurrence=2)
        await i.mock_event("go", "event")
        await i.force_event_timeout("go")  # the mocked event wins, whatever the timing
        waiting = asyncio.create_task(i.wait_for_status("complete"))  # before it exists
        await asyncio.sleep(0.1)
        await env.client.workflow("transfer").create(id="t-2", params={})
        status = await waiting  # within the env's 10 s: the delays would take 30
        assert status.output == ["real", "mocked", "event"]
        assert await i.wait_for_step_result("fetch", occurrence=2) == "mocked"
        fetches = [s for s in status.to_dict()["steps"] if s["name"] == "fetch"]
        assert [[a["success"] for a in f["attempts"]] for f in fetches] == [
            [True], [False, False, True]]


async def test_bad_doubles_are_refused_when_registered() -> None:
    async with WorkflowTestEnv(workflows=[Transfer]) as env:
        i = env.introspect("transfer", "t-3")
        with pytest.raises(ValidationError, match="Exception instance"):
            await i.mock_step_error("fetch", KeyboardInterrupt())  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="not JSON"):
            await i.mock_event("go", {"x": object()})
        with pytest.raises(ValidationError, match="at least 1"):
            await i.mock_step_error("fetch", RuntimeError(), times=0)


async def test_closing_goes_on_past_a_part_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    env = WorkflowTestEnv(workflows=[Transfer])
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(env)
        worker, directory = env._worker, env._dir
        assert worker is not None and directory is not None

        async def broken(self: object) -> None:
            raise OSError("subscription already gone")

        monkeypatch.setattr(Subscription, "aclose", broken)
        with pytest.raises(OSError, match="already gone"):
            await stack.aclose()
    # The worker was closed all the same, and nothing of the environment is left.
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("warren-")]
    assert _test_doubles.active is None and not directory.exists()


class Napper(WorkflowEntrypoint):
    name = "napper"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("nap", "3 days")
        try:
            await step.wait_for_event("reply", "reply", timeout="1 day")
            replied = True
        except WorkflowTimeoutError:
            replied = False
        return {"replied": replied, "fetched": await step.do("after", _fetch)}


async def test_the_virtual_clock_moves_sleeps_and_timeouts_forward(stack: Stack) -> None:
    async with _env(stack, Napper) as env:
        i = env.introspect("napper", "n-1")
        await env.client.workflow("napper").create(id="n-1", params={})
        await i.wait_for_status("waiting")
        created = env.clock.now_ms()
        await env.clock.advance("2 days")  # not yet
        with pytest.raises(TimeoutError):
            await i.wait_for_step_result("nap", timeout=1)
        await env.clock.advance("1 day")
        await i.wait_for_step_result("nap")  # the 3 days are over
        await env.clock.advance("1 day")  # and the reply's wait times out
        status = await i.wait_for_status("complete")
        assert status.output == {"replied": False, "fetched": "real"}
        assert env.clock.now_ms() - created >= 4 * 86_400_000
        with pytest.raises(ValueError, match="negative"):
            await env.clock.advance(-1)
    assert _clock.skew_ms() == 0  # the next environment starts on the wall clock
