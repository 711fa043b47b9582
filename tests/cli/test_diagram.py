"""``warren diagram FILE.py``: a workflow's steps drawn from its code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine._diagram import diagram_of
from engine._loader import load_module, workflows_in
from sdk import WorkflowEntrypoint
from sdk.errors import ValidationError
from tests.cli.conftest import REPO, clean_env, warren

TRANSFER = '''
import asyncio
from sdk import WorkflowEntrypoint
from sdk.errors import StepFailedError


class Transfer(WorkflowEntrypoint):
    async def run(self, event, step):
        p = event.payload
        quote = await step.do("get quote", lambda: 1)

        @step.do("debit a", retries={"limit": 5})
        async def debit():
            return 1

        @debit.rollback
        async def undo(ctx):
            pass

        await debit()
        a, b = await asyncio.gather(step.do("a", lambda: 1), step.do("b", lambda: 2))
        await asyncio.gather(*[step.do(f"charge {i}", lambda: i) for i in p["items"]])
        if p.get("big"):
            await step.wait_for_event("approval", "approved", timeout="1 hour")
        else:
            await step.sleep("cool off", "10 seconds")
        for item in p["items"]:
            await step.do(f"ship {item}", lambda: 1)
        try:
            await step.do("publish", lambda: 1, rollback=lambda ctx: None)
        except StepFailedError:
            await step.do("notify", lambda: 1)
        await self.finish(step, p)
        return quote

    async def finish(self, s, p):
        await s.sleep_until("cut-off", p["at"])


class Settle(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do("fetch a")
        async def fetch_a():
            return 1

        @step.do("fetch b")
        async def fetch_b():
            return 2

        @step.do("settle", depends=[fetch_a, fetch_b], concurrent=True)
        async def settle(a, b):
            return a + b

        @step.do("report")
        async def report(settle):
            return settle

        await report()
'''


def _load(tmp_path: Path) -> dict[str, type[WorkflowEntrypoint]]:
    path = tmp_path / "transfer_flows.py"
    path.write_text(TRANSFER)
    return {w.name: w for w in workflows_in([load_module(str(path))])}


def _step(kind: str, name: str, line: int, **more: Any) -> dict[str, Any]:
    return {"type": kind, "name": name, "line": line, **more}


def test_the_structure_follows_the_code(tmp_path: Path) -> None:
    drawn = diagram_of(_load(tmp_path)["transfer"]).to_dict()
    assert drawn == {"workflow": "transfer", "steps": [
        _step("do", "get quote", 10),
        _step("do", "debit a", 13, rollback=True),  # the decorated form, run where called
        {"type": "parallel", "branches": [[_step("do", "a", 21)], [_step("do", "b", 21)]]},
        {"type": "loop", "over": "for i in p['items']", "parallel": True,
         "steps": [_step("do", "charge {i}", 22)]},
        {"type": "decision", "question": "p.get('big')", "arms": [
            {"when": "yes",
             "steps": [_step("wait_for_event", "approval", 24, event_type="approved")]},
            {"when": "no", "steps": [_step("sleep", "cool off", 26, duration="10 seconds")]},
        ]},
        {"type": "loop", "over": "for item in p['items']", "parallel": False,
         "steps": [_step("do", "ship {item}", 28)]},
        {"type": "try", "steps": [_step("do", "publish", 30, rollback=True)],
         "handlers": [{"on": "on StepFailedError", "steps": [_step("do", "notify", 32)]}]},
        # A helper method handed the step object (under another name) is followed.
        _step("sleep_until", "cut-off", 37, until="p['at']"),
    ]}


def test_elif_is_a_decision_in_the_no_arm_and_match_has_an_arm_per_case(
    tmp_path: Path,
) -> None:
    (tmp_path / "branches.py").write_text(
        "from sdk import WorkflowEntrypoint\n\n\n"
        "class Branches(WorkflowEntrypoint):\n"
        "    async def run(self, event, step):\n"
        "        if event.payload == 1:\n"
        "            await step.do('one', lambda: 1)\n"
        "        elif event.payload == 2:\n"
        "            await step.do('two', lambda: 2)\n"
        "        match event.payload:\n"
        "            case 1:\n"
        "                await step.do('case one', lambda: 1)\n"
        "            case _:\n"
        "                pass\n"
        "        match event.payload:\n"
        "            case {'kind': kind}:\n"
        "                await step.do(f'handle {kind}', lambda: 1)\n")
    (workflow,) = workflows_in([load_module(str(tmp_path / "branches.py"))])
    assert diagram_of(workflow).to_dict()["steps"] == [
        {"type": "decision", "question": "event.payload == 1", "arms": [
            {"when": "yes", "steps": [_step("do", "one", 7)]},
            {"when": "no", "steps": [
                {"type": "decision", "question": "event.payload == 2", "arms": [
                    {"when": "yes", "steps": [_step("do", "two", 9)]},
                    {"when": "no", "steps": []}]}]}]},
        {"type": "decision", "question": "match event.payload", "arms": [
            {"when": "case 1", "steps": [_step("do", "case one", 12)]},
            {"when": "case _", "steps": []}]},  # catches all: no "no match" arm
        {"type": "decision", "question": "match event.payload", "arms": [
            {"when": "case {'kind': kind}", "steps": [_step("do", "handle {kind}", 17)]},
            {"when": "no match", "steps": []}]},
    ]


def test_dependencies_run_first_and_together_when_concurrent(tmp_path: Path) -> None:
    drawn = diagram_of(_load(tmp_path)["settle"]).to_dict()
    # `report` takes `settle` by parameter name, `settle` depends on both fetches.
    assert drawn["steps"] == [
        {"type": "parallel", "branches": [[_step("do", "fetch a", 43)],
                                          [_step("do", "fetch b", 47)]]},
        _step("do", "settle", 51), _step("do", "report", 55)]


def test_the_mermaid_flowchart_draws_every_path(tmp_path: Path) -> None:
    text = diagram_of(_load(tmp_path)["transfer"]).mermaid()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "flowchart TD"
    nodes = {m.group(2): m.group(1) for line in lines
             if (m := re.match(r'(n\d+)(?:\[\[|\[/|\(\[|\[|\{\{|\{)"(.*?)"', line))}

    def node(label: str) -> str:
        return nodes[label]

    assert f"start --> {node('get quote')}" in lines
    # Parallel steps start from the same step and both lead to the next one.
    for branch in ("a", "b"):
        assert f"{node('debit a ↩ rollback')} --> {node(branch)}" in lines
    # ... and a comprehension handed to gather runs an item per element, all at once.
    each = node("for i in p['items'], all at once")
    assert f"{node('a')} --> {each}" in lines and f"{node('b')} --> {each}" in lines
    assert f'{each} -->|"each"| {node("charge {i}")}' in lines
    decision = node("p.get('big')?")
    assert f"{node('charge {i}')} --> {decision}" in lines
    assert f'{decision} -->|"yes"| {node("wait for event: approval (approved)")}' in lines
    assert f'{decision} -->|"no"| {node("sleep: cool off (10 seconds)")}' in lines
    loop = node("for item in p['items']")
    assert f'{loop} -->|"each"| {node("ship {item}")}' in lines
    assert f"{node('ship {item}')} --> {loop}" in lines  # and back
    assert f'{loop} -->|"done"| {node("publish ↩ rollback")}' in lines
    block = next(line.split()[1] for line in lines if line.startswith("subgraph"))
    assert f'{block} -.->|"on StepFailedError"| {node("notify")}' in lines
    cut_off = node("sleep until: cut-off (p['at'])")
    assert f"{node('publish ↩ rollback')} --> {cut_off}" in lines
    assert f"{node('notify')} --> {cut_off}" in lines
    assert f"{cut_off} --> finish" in lines


def test_a_workflow_without_source_is_a_clear_error() -> None:
    namespace: dict[str, Any] = {"WorkflowEntrypoint": WorkflowEntrypoint}
    exec("class NoSource(WorkflowEntrypoint):\n    async def run(self, event, step):\n"
         "        pass\n", namespace)
    with pytest.raises(ValidationError, match=r"source of NoSource\.run cannot be read"):
        diagram_of(namespace["NoSource"])


def test_the_command_prints_mermaid_or_json(tmp_path: Path) -> None:
    example = str(REPO / "examples" / "order_processing.py")
    result = warren("diagram", example, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("flowchart TD\n")
    assert '["charge payment"]' in result.stdout
    result = warren("diagram", example, "--json", env=clean_env())
    assert result.returncode == 0, result.stderr
    drawn = orjson.loads(result.stdout)
    assert drawn["workflow"] == "order-processing"
    assert [s["name"] for s in drawn["steps"]][:2] == ["reserve inventory", "charge payment"]


def test_the_command_needs_one_workflow(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(TRANSFER)
    several = warren("diagram", "flows.py", env=clean_env(), cwd=tmp_path)
    assert several.returncode == 2, several.stderr
    assert several.stderr.strip() == (
        "warren: flows.py defines settle, transfer: choose one with --workflow")
    chosen = warren("diagram", "flows.py", "--workflow", "settle", env=clean_env(), cwd=tmp_path)
    assert chosen.returncode == 0 and '["fetch a"]' in chosen.stdout, chosen.stderr
    unknown = warren("diagram", "flows.py", "--workflow", "nope", env=clean_env(), cwd=tmp_path)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "warren: no workflow named nope in flows.py"


def test_a_recursive_helper_is_read_once_and_quotes_are_escaped(tmp_path: Path) -> None:
    (tmp_path / "retry_loop.py").write_text(
        "from sdk import WorkflowEntrypoint\n\n\n"
        "class RetryLoop(WorkflowEntrypoint):\n"
        "    async def run(self, event, step):\n"
        "        await self.attempt(step, 1)\n\n"
        "    async def attempt(self, step, n):\n"
        "        ok = await step.do(f'try \"{n}\"', lambda: n)\n"
        "        if not ok:\n"
        "            await self.attempt(step, n + 1)\n")
    (workflow,) = workflows_in([load_module(str(tmp_path / "retry_loop.py"))])
    drawn = diagram_of(workflow)
    assert drawn.to_dict()["steps"] == [_step("do", 'try "{n}"', 9)]
    assert '["try #quot;{n}#quot;"]' in drawn.mermaid()
