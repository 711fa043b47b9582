"""``sdk.testing``: a workflow tested in process, with its steps, events and sleeps mocked.

The environment is the embedded engine by default (memory broker, SQLite in a temporary
directory), or the services it is given: the doubles are checked on both stacks, since
they act on real turns, not on a simulation of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import sdk.testing
from engine import _test_doubles
from sdk import NonRetryableError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
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


def _env(stack: Stack) -> WorkflowTestEnv:
    if stack.name == "memory-sqlite":
        return WorkflowTestEnv(workflows=[Moderate])  # its own broker and store
    return WorkflowTestEnv(workflows=[Moderate], broker_url=stack.broker_url,
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
    assert sorted(sdk.testing.__all__) == ["InstanceIntrospector", "WorkflowTestEnv"]
