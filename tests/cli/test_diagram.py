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
        _step("do", "debit a", 12, rollback=True),  # the decorated form, run where called
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
        {"type": "return", "line": 34},
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
        {"type": "parallel", "branches": [[_step("do", "fetch a", 42)],
                                          [_step("do", "fetch b", 46)]]},
        _step("do", "settle", 50), _step("do", "report", 54)]


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
    assert [s.get("name") for s in drawn["steps"]] == [
        "reserve inventory", "charge payment", "send confirmation email", "save to database",
        None]  # the return
    assert drawn["steps"][-1]["type"] == "return"


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


TRICKY = '''
import asyncio
import asyncio as aio
from sdk import WorkflowEntrypoint

SQL = """
SELECT 1
"""


class Tricky(WorkflowEntrypoint):
    async def run(self, event, step, /):
        q = """
SELECT 2
"""
        while not await step.do("poll", lambda: q):
            await step.sleep(name="nap", duration="5 seconds")
        try:
            int(event.payload)
        except ValueError:
            await step.do("report bad input", lambda: 1)
        else:
            await step.do("after parse", lambda: 1)

        async def ship(i):
            await step.do(f"pack {i}", lambda: i)
            await step.do(f"send {i}", lambda: i)

        await aio.gather(*[ship(i) for i in range(2)])
        tasks = [step.do(f"t {i}", lambda: i) for i in await step.do("list", lambda: [1])]
        await asyncio.gather(*tasks)
        await asyncio.gather(*[step.do("x", lambda: 1), step.do("y", lambda: 2)])
        async with asyncio.TaskGroup() as tg:
            tg.create_task(step.do("tg a", lambda: 1))
            tg.create_task(step.do("tg b", lambda: 2))
        await (step.do("then", lambda: 1) if event.payload else step.do("otherwise", lambda: 2))
        await step.wait_for_event("approval", event_type="approved")
        await self.helper(step, 1)
        if event.payload == "stop":
            raise ValueError("stopped")
        return None

    @staticmethod
    async def helper(step, n):
        await step.sleep_until("cut-off", when=n)


class Dag(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do("load")
        async def load():
            return 1

        @step.do("load again")
        async def load(load):  # shadows the first: depends on it
            return load

        @step.do("d2")
        async def d2():
            return 2

        @step.do("d1")
        async def d1(d2):
            return d2

        @step.do("x", depends=[d1, d2], concurrent=True)
        async def x(a, b):
            return a

        @step.do("c", depends=[d2])
        async def c(d1):  # depends= replaces the parameter-name rule
            return d1

        if event.payload:
            await d1()
        else:
            await c()
        await x()
        await load()
'''


def _tricky(tmp_path: Path) -> dict[str, type[WorkflowEntrypoint]]:
    (tmp_path / "tricky.py").write_text(TRICKY)
    return {w.name: w for w in workflows_in([load_module(str(tmp_path / "tricky.py"))])}


def test_patterns_the_reading_must_follow(tmp_path: Path) -> None:
    steps = diagram_of(_tricky(tmp_path)["tricky"]).to_dict()["steps"]
    assert steps == [
        # A while condition runs before every pass; keyword arguments are read.
        {"type": "loop", "over": "while not await step.do('poll', lambda: q)",
         "parallel": False,
         "steps": [_step("do", "poll", 16), _step("sleep", "nap", 17, duration="5 seconds")]},
        # A try whose body has no step still has its handler; else is not guarded.
        {"type": "try", "steps": [], "handlers": [
            {"on": "on ValueError", "steps": [_step("do", "report bad input", 21)]}]},
        _step("do", "after parse", 23),
        # A local function's steps, an item per element, all at once (any gather).
        {"type": "loop", "over": "for i in range(2)", "parallel": True,
         "steps": [_step("do", "pack {i}", 26), _step("do", "send {i}", 27)]},
        # Step calls not awaited one by one are started together; the iterable first.
        _step("do", "list", 30),
        {"type": "loop", "over": "for i in await step.do('list', lambda: [1])",
         "parallel": True, "steps": [_step("do", "t {i}", 30)]},
        {"type": "parallel", "branches": [[_step("do", "x", 32)], [_step("do", "y", 32)]]},
        {"type": "parallel", "branches": [[_step("do", "tg a", 34)],
                                          [_step("do", "tg b", 35)]]},
        {"type": "decision", "question": "event.payload", "arms": [
            {"when": "yes", "steps": [_step("do", "then", 36)]},
            {"when": "no", "steps": [_step("do", "otherwise", 36)]}]},
        _step("wait_for_event", "approval", 37, event_type="approved"),
        _step("sleep_until", "cut-off", 45, until="n"),  # a static helper
        {"type": "decision", "question": "event.payload == 'stop'", "arms": [
            {"when": "yes", "steps": [{"type": "raise", "line": 40}]},
            {"when": "no", "steps": []}]},
        {"type": "return", "line": 41},
    ]


def test_decorated_steps_follow_the_sdk_dependency_rules(tmp_path: Path) -> None:
    steps = diagram_of(_tricky(tmp_path)["dag"]).to_dict()["steps"]
    assert steps == [
        {"type": "decision", "question": "event.payload", "arms": [
            {"when": "yes", "steps": [_step("do", "d2", 58), _step("do", "d1", 62)]},
            # c depends on d2 only (depends= wins over its parameter named d1).
            {"when": "no", "steps": [_step("do", "d2", 58), _step("do", "c", 70)]}]},
        # d2 ran in both arms; d1 in one only, so x may still need it (once, with d2's).
        _step("do", "d1", 62), _step("do", "x", 66),
        # The second `load` depends on the first, not on itself.
        _step("do", "load", 50), _step("do", "load again", 54),
    ]


def test_paths_end_at_return_and_raise_and_boxes_hold_only_their_steps() -> None:
    text = diagram_of(workflows_in([load_module(str(REPO / "examples" / "approval.py"))])[0]
                      ).mermaid()
    lines = [line.strip() for line in text.splitlines()]
    nodes = {m.group(2): m.group(1) for line in lines
             if (m := re.match(r'(n\d+)(?:\[/|\[|\{)"(.*?)"', line))}
    box = lines.index('subgraph try2 ["try"]')
    # Mermaid puts a node in the box where it is first mentioned: only the waited event.
    assert lines[box + 1:lines.index("end", box)] == [
        'n3[/"wait for event: wait for approval (approval)"/]']
    assert lines.index(f"start --> {nodes['notify approver']}") > lines.index("end", box)
    assert 'try2 -.->|"on WorkflowTimeoutError"| finish' in lines  # returns "expired"
    question = nodes["not decision.payload.get('approved')?"]
    assert f'{question} -->|"yes"| finish' in lines  # returns "rejected"
    assert f'{question} -->|"no"| {nodes["pay out"]}' in lines
    assert f"{nodes['pay out']} --> finish" in lines


def test_labels_show_what_mermaid_would_otherwise_interpret(tmp_path: Path) -> None:
    (tmp_path / "labels.py").write_text(
        "from sdk import WorkflowEntrypoint\n\n\n"
        "class Labels(WorkflowEntrypoint):\n"
        "    async def run(self, event, step):\n"
        "        await step.do('order #42; <b>`x`</b>', lambda: 1)\n")
    (workflow,) = workflows_in([load_module(str(tmp_path / "labels.py"))])
    assert '["order #35;42; #lt;b#gt;#96;x#96;#lt;/b#gt;"]' in diagram_of(workflow).mermaid()


POLL = '''
from sdk import WorkflowEntrypoint


class Poll(WorkflowEntrypoint):
    async def run(self, event, step):
        for attempt in range(10):
            ready = await step.do(f"check {attempt}", lambda: True)
            if ready:
                break
            if attempt % 2:
                continue
            await step.sleep(f"wait {attempt}", "1 minute")
        else:
            await step.do("give up", lambda: 1)
            return "gave up"
        while True:
            if not await step.do("pull", lambda: 1):
                break
        for i in range(3):
            if i:
                break
        await step.do("done", lambda: 1)
'''


def test_break_leaves_the_loop_past_its_else_and_continue_goes_back(tmp_path: Path) -> None:
    (tmp_path / "poll.py").write_text(POLL)
    (workflow,) = workflows_in([load_module(str(tmp_path / "poll.py"))])
    first, endless, done = diagram_of(workflow).to_dict()["steps"]
    assert first["else"] == [_step("do", "give up", 15), {"type": "return", "line": 16}]
    assert first["steps"][1]["arms"][0]["steps"] == [{"type": "break", "line": 10}]
    assert endless["endless"] is True and "else" not in endless
    assert done == _step("do", "done", 23)  # a loop without steps is not drawn

    lines = [line.strip() for line in diagram_of(workflow).mermaid().splitlines()]
    nodes = {m.group(2): m.group(1) for line in lines
             if (m := re.match(r'(n\d+)(?:\(\[|\[|\{\{|\{)"(.*?)"', line))}
    loop, ready, odd = nodes["for attempt in range(10)"], nodes["ready?"], nodes["attempt % 2?"]
    while_true, pulled = nodes["while True"], nodes["not await step.do('pull', lambda: 1)?"]
    assert f'{odd} -->|"yes"| {loop}' in lines  # continue: the next pass
    assert f'{loop} -->|"done"| {nodes["give up"]}' in lines  # else: only without a break
    assert f'{ready} -->|"yes"| {while_true}' in lines  # break: past the else
    assert f'{pulled} -->|"yes"| {nodes["done"]}' in lines
    assert not [line for line in lines if line.startswith(f"{while_true} -->|\"done\"")]
