"""Acceptance of events, human-in-the-loop, instance control and listing (issue 3)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import orjson
import pytest

from broker import REASON_HEADER, OutgoingMessage, broker_from_url
from sdk import (
    Client,
    InstanceNotFoundError,
    InvalidTransitionError,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
    WorkflowTimeoutError,
)
from tests.helpers import eventually
from tests.stacks import Stack

RUNS: Counter[str] = Counter()


class Approval(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        draft = await step.do("draft", lambda: {"doc": event.payload["doc"]})
        approval = await step.wait_for_event("wait for approval", "approval", timeout="1 hour")
        return {"draft": draft, "approved_by": approval.payload["by"], "type": approval.type}


async def test_human_in_the_loop_event_resumes_instance(stack: Stack) -> None:
    async with stack.running([Approval]) as client:
        inst = await client.workflow("approval").create(params={"doc": "spec"})
        waiting = await inst.wait_for_status("waiting", timeout=10)
        assert waiting.steps[-1]["type"] == "wait_for_event"
        await inst.send_event("approval", {"by": "ana"})
        st = await inst.wait_for_status("complete", timeout=10)
    assert st.output == {"draft": {"doc": "spec"}, "approved_by": "ana", "type": "approval"}


class Buffered(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.wait_for_event("go", "go")
        first = await step.wait_for_event("item 1", "item")
        second = await step.wait_for_event("item 2", "item")
        return [first.payload, second.payload]


async def test_buffered_events_consumed_in_order_and_by_type(stack: Stack) -> None:
    async with stack.running([Buffered]) as client:
        inst = await client.workflow("buffered").create()
        await inst.wait_for_status("waiting", timeout=10)
        # Sent before their waits exist: buffered; the other type is not consumed.
        await inst.send_event("item", {"n": 1})
        await inst.send_event("other", {"n": 99})
        await inst.send_event("item", {"n": 2})
        await eventually(lambda: _event_count(stack, inst.id, 3), timeout=10)
        await inst.send_event("go", None)
        st = await inst.wait_for_status("complete", timeout=10)
    assert st.output == [{"n": 1}, {"n": 2}]


async def _event_count(stack: Stack, instance_id: str, n: int) -> bool:
    from engine._store._database import Database

    db = Database(stack.database_url)
    try:
        async with db.reading() as conn:
            got = (await conn.exec_driver_sql(
                "SELECT count(*) FROM warren_events e JOIN warren_instances i "
                f"ON i.pk = e.instance_pk WHERE i.instance_id = '{instance_id}'")).scalar()
    finally:
        await db.close()
    return got == n


class Timeout(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        began = await step.do("began", time.time)
        try:
            await step.wait_for_event("reply", "reply", timeout="2 seconds")
            outcome = "replied"
        except WorkflowTimeoutError as exc:
            outcome = f"timed out: {type(exc).__name__}"
        ended = await step.do("ended", time.time)
        return {"outcome": outcome, "waited": ended - began}


async def test_wait_timeout_raises_catchable_error_after_timeout(stack: Stack) -> None:
    async with stack.running([Timeout]) as client:
        st = await (await client.workflow("timeout").create()).wait_for_status("complete", 20)
    assert st.output["outcome"] == "timed out: WorkflowTimeoutError"
    assert st.output["waited"] >= 2.0
    wait = st.steps[1]
    assert wait["type"] == "wait_for_event" and wait["success"] is False
    assert wait["error"]["name"] == "WorkflowTimeoutError"


class Race(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        ok = asyncio.ensure_future(step.wait_for_event("success", "payment-success"))
        bad = asyncio.ensure_future(step.wait_for_event("failure", "payment-failure"))
        done, _ = await asyncio.wait([ok, bad], return_when=asyncio.FIRST_COMPLETED)
        branch = "success" if ok in done else "failure"
        await step.do(f"on {branch}", lambda: RUNS.update([branch]) or branch)
        await step.wait_for_event("finish", "finish")
        return branch


async def test_race_takes_first_event_and_replays_same_branch(stack: Stack) -> None:
    RUNS.clear()
    async with stack.running([Race]) as client:
        inst = await client.workflow("race").create()
        await inst.wait_for_status("waiting", timeout=10)
        await inst.send_event("payment-failure", {"reason": "declined"})
        await eventually(lambda: RUNS["failure"] == 1, timeout=10)
        await inst.wait_for_status("waiting", timeout=10)
    # A new worker replays from history; the late success event must not change the branch.
    async with stack.running([Race]) as client:
        inst = await client.workflow("race").get(inst.id)
        await inst.send_event("payment-success", {})
        await inst.send_event("finish", {})
        st = await inst.wait_for_status("complete", timeout=10)
    assert st.output == "failure"
    assert Counter({"failure": 1}) == RUNS


# AMQP allows message ids of 255 chars, longer than the store's column; two long ones
# that differ only at the end must stay two.
@pytest.mark.parametrize("prefix", ["webhook", "w" * 240], ids=["short", "255-chars"])
async def test_relayed_webhook_with_message_id_is_delivered_once(
    stack: Stack, prefix: str
) -> None:
    async with stack.running([Buffered]) as client:
        inst = await client.workflow("buffered").create()
        await inst.wait_for_status("waiting", timeout=10)
        async with broker_from_url(stack.broker_url, stack.namespace) as relay:
            raw = OutgoingMessage("events", f"buffered.{inst.id}.item", b'{"n": "once"}',
                                  message_id=f"{prefix}-123")
            await relay.publish([raw])
            await relay.publish([raw])
            await relay.publish([OutgoingMessage("events", f"buffered.{inst.id}.item",
                                                 b'{"n": "next"}',
                                                 message_id=f"{prefix}-456")])
        await eventually(lambda: _event_count(stack, inst.id, 2), timeout=10)
        await inst.send_event("go")
        st = await inst.wait_for_status("complete", timeout=10)
    assert st.output == [{"n": "once"}, {"n": "next"}]


async def test_events_for_unknown_or_finished_instances_are_rejected(stack: Stack) -> None:
    async with stack.running([Approval], event_grace_s=0.5) as client:
        wf = client.workflow("approval")
        with pytest.raises(InstanceNotFoundError):
            await (await _instance(client, "approval", "ghost")).send_event("approval", {})
        inst = await wf.create(params={"doc": "x"})
        await inst.wait_for_status("waiting", timeout=10)
        await inst.send_event("approval", {"by": "bo"})
        await inst.wait_for_status("complete", timeout=10)
        with pytest.raises(InvalidTransitionError, match="complete"):
            await inst.send_event("approval", {"by": "late"})
        # Over the wire (a webhook relay has no client to raise): dead-lettered with a reason.
        async with broker_from_url(stack.broker_url, stack.namespace) as relay:
            await relay.publish([
                OutgoingMessage("events", "approval.ghost.approval", b"{}"),
                OutgoingMessage("events", f"approval.{inst.id}.approval", b"{}"),
                OutgoingMessage("events", f"approval.{inst.id}.bad!type", b"{}"),
                OutgoingMessage("events", f"approval.{inst.id}.approval", b"not json"),
            ])
            reasons = []
            for _ in range(4):
                dead = await relay.get_dead(timeout_s=10)  # type: ignore[attr-defined]
                assert dead is not None
                reasons.append(str(dead.headers[REASON_HEADER]))
    assert any("no instance 'ghost'" in r for r in reasons)
    assert any("is complete" in r for r in reasons)
    assert any("invalid event type" in r for r in reasons)
    assert any("not JSON" in r for r in reasons)


async def _instance(client: Client, workflow: str, instance_id: str) -> Any:
    from sdk import Instance

    return Instance(client, workflow, instance_id)


class Steps(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        hold = event.payload.get("hold", 0)

        async def body(name: str) -> str:
            RUNS.update([name])
            if name == "s1":
                await asyncio.sleep(hold)
            return name

        retries = {"limit": event.payload["limit"]} if "limit" in event.payload else None
        out = []
        for name in ("s1", "s2", "s3"):
            out.append(await step.do(name, lambda name=name: body(name), retries=retries))
        return out


@asynccontextmanager
async def _lifecycle(client: Client, workflow: str) -> Any:
    seen: list[dict[str, Any]] = []
    async with client.subscribe(workflow) as events:  # bound from here on

        async def collect() -> None:
            async for event in events:
                seen.append(event)

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_pause_resume_terminate_restart(stack: Stack) -> None:
    RUNS.clear()
    async with stack.running([Steps]) as client, _lifecycle(client, "steps") as seen:
        wf = client.workflow("steps")
        # pause while s1 runs: waiting_for_pause, then paused, and s2 never starts.
        inst = await wf.create(params={"hold": 1.0})
        await eventually(lambda: RUNS["s1"] == 1, timeout=10)
        await inst.pause()
        await inst.pause()  # idempotent
        await inst.wait_for_status("waiting_for_pause", timeout=5)
        paused = await inst.wait_for_status("paused", timeout=10)
        assert [s["name"] for s in paused.steps] == ["s1"] and RUNS["s2"] == 0
        await inst.resume()
        assert (await inst.wait_for_status("complete", timeout=10)).output == ["s1", "s2", "s3"]
        # restart of a completed instance reruns everything; from_step keeps what came before.
        await inst.restart()
        await inst.wait_for_status("complete", timeout=10)
        assert Counter({"s1": 2, "s2": 2, "s3": 2}) == RUNS
        await inst.restart(from_step="s2")
        await eventually(lambda: RUNS["s3"] == 3, timeout=10)
        st = await inst.wait_for_status("complete", timeout=10)
        assert Counter({"s1": 2, "s2": 3, "s3": 3}) == RUNS and st.output == ["s1", "s2", "s3"]
        # terminate during a long step: its result is discarded, the next step never runs.
        doomed = await wf.create(params={"hold": 1.5})
        await eventually(lambda: RUNS["s1"] == 3, timeout=10)
        await doomed.terminate()
        await doomed.terminate()  # idempotent
        await doomed.wait_for_status("terminated", timeout=10)
        await asyncio.sleep(2.0)  # the step body finishes meanwhile; nothing may follow it
        final = await doomed.status()
        assert final.status == "terminated" and RUNS["s2"] == 3
        assert final.steps[0]["output"] is None and final.steps[0]["success"] is None
        # invalid transitions say why
        for action in (inst.pause, inst.resume, inst.terminate):
            with pytest.raises(InvalidTransitionError, match="complete"):
                await action()
        with pytest.raises(InstanceNotFoundError):
            await (await _instance(client, "steps", "missing")).pause()
        await eventually(lambda: {"instance.paused", "instance.resumed", "instance.restarted",
                                  "instance.terminated"} <= {e["kind"] for e in seen},
                         timeout=5)


async def test_restart_retries_a_step_its_instance_abandoned_mid_attempt(stack: Stack) -> None:
    RUNS.clear()
    async with stack.running([Steps]) as client:
        # No retries: the abandoned attempt must not use up the step's only attempt.
        inst = await client.workflow("steps").create(params={"hold": 1.0, "limit": 0})
        await eventually(lambda: RUNS["s1"] == 1, timeout=10)
        await inst.terminate()  # s1's attempt is abandoned: its result can never land
        await inst.wait_for_status("terminated", timeout=10)
        # s3 never ran, so the restart keeps all history, s1's abandoned attempt included.
        await inst.restart(from_step="s3")
        st = await inst.wait_for_status("complete", timeout=20)
    assert st.output == ["s1", "s2", "s3"] and RUNS["s1"] == 2
    attempts = st.steps[0]["attempts"]
    assert [a["success"] for a in attempts] == [False, True]
    assert attempts[0]["error"]["name"] == "AttemptAbandonedError"


async def test_subscriber_sees_step_and_instance_events_in_order(stack: Stack) -> None:
    async with stack.running([Steps]) as client, _lifecycle(client, "steps") as seen:
        inst = await client.workflow("steps").create(params={})
        await inst.wait_for_status("complete", timeout=10)
        await eventually(lambda: any(e["kind"] == "instance.complete" for e in seen), timeout=5)
    mine = [e["kind"] for e in seen if e["instance_id"] == inst.id]
    assert mine.index("instance.queued") < mine.index("instance.started")
    assert mine.index("step.started") < mine.index("step.succeeded")
    assert mine[-1] == "instance.complete"
    assert mine.count("step.succeeded") == 3
    assert all("timestamp" in e for e in seen)


async def test_a_subscription_receives_every_event_published_once_its_block_began(
    stack: Stack,
) -> None:
    client = stack.client()
    async with client, client.subscribe("steps") as events:
        # No worker: the client's instance.queued is the only event there will be, so a
        # subscription bound only at the first iteration would never receive it.
        inst = await client.workflow("steps").create(params={})
        first = await asyncio.wait_for(events.__anext__(), timeout=5)
        assert (first["instance_id"], first["kind"]) == (inst.id, "instance.queued")
        await events.aclose()
        assert [event async for event in events] == []  # closed: the iteration ends


async def test_a_subscription_closed_before_or_while_it_binds_ends(stack: Stack) -> None:
    client = stack.client()
    async with client:
        early = client.subscribe("steps")
        await early.aclose()
        assert [event async for event in early] == []
        racing = client.subscribe("steps")
        iterating = asyncio.create_task(anext(racing, None))
        entering = asyncio.create_task(racing.__aenter__())  # a second start at once
        await asyncio.sleep(0)
        await racing.aclose()
        assert await asyncio.wait_for(iterating, 5) is None
        await asyncio.wait_for(entering, 5)


async def test_lifecycle_events_instance_publishes_only_instance_kinds(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARREN_LIFECYCLE_EVENTS", "instance")  # the client's setting
    async with stack.running([Steps], lifecycle_events="instance") as client, \
            _lifecycle(client, "steps") as seen:
        inst = await client.workflow("steps").create(params={})
        await inst.wait_for_status("complete", timeout=10)
        # Published in order on one channel: step events would have come before this one.
        await eventually(lambda: any(e["kind"] == "instance.complete" for e in seen), timeout=5)
    assert [e["kind"] for e in seen] == ["instance.queued", "instance.started",
                                         "instance.complete"]


async def test_lifecycle_events_none_publishes_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARREN_LIFECYCLE_EVENTS", "none")  # the client's and the worker's
    async with stack.client() as client, _lifecycle(client, "steps") as seen:
        async with stack.worker([Steps]):
            inst = await client.workflow("steps").create(params={})
            await inst.wait_for_status("complete", timeout=10)
        # The worker has closed its connection: whatever it published is routed by now, so
        # an event published after it marks the end of what the subscriber can receive.
        monkeypatch.setenv("WARREN_LIFECYCLE_EVENTS", "instance")
        async with stack.client() as marker:
            end = await marker.workflow("steps").create(params={})  # no worker: stays queued
        await eventually(lambda: bool(seen), timeout=5)
    assert [(e["instance_id"], e["kind"]) for e in seen] == [(end.id, "instance.queued")]


async def test_list_pages_are_stable_while_instances_are_created(stack: Stack) -> None:
    total = 10_000 if stack.name == "rabbitmq-postgres" else 2_000
    async with stack.client() as client:
        wf = client.workflow("listed")
        existing: list[str] = []
        for _ in range(total // 100):
            existing += [i.id for i in await wf.create_batch([{"params": None}] * 100)]

        async def create_more() -> None:
            for _ in range(10):
                await wf.create_batch([{"params": "new"}] * 100)

        creating = asyncio.create_task(create_more())
        seen: list[str] = []
        cursor = None
        while True:
            page = await wf.list(limit=100, cursor=cursor)
            seen += [i.id for i in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        await creating
    counts = Counter(seen)
    assert all(counts[i] == 1 for i in existing), "a pre-existing instance was missed or repeated"
    assert max(counts.values()) == 1
    queued = await _first_page(stack, "listed")
    assert all(i.status == "queued" for i in queued)


async def _first_page(stack: Stack, workflow: str) -> list[Any]:
    async with stack.client() as client:
        page = await client.workflow(workflow).list(status="queued", limit=5)
    return page.items


async def test_create_message_from_plain_aio_pika_starts_an_instance(real_stack: Stack) -> None:
    import aio_pika

    async with real_stack.running([Approval]) as client:
        connection = await aio_pika.connect(real_stack.broker_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(f"{real_stack.namespace}.create")
            await exchange.publish(
                aio_pika.Message(orjson.dumps({"id": "from-elsewhere", "params": {"doc": "d"}}),
                                 content_type="application/json",
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="approval")
        inst = await eventually(lambda: _get(client, "from-elsewhere"), timeout=10)
        await inst.wait_for_status("waiting", timeout=10)
        await inst.send_event("approval", {"by": "wire"})
        st = await inst.wait_for_status("complete", timeout=10)
    assert st.output["approved_by"] == "wire"


async def _get(client: Client, instance_id: str, workflow: str = "approval") -> Any:
    """The instance if it is stored yet, else ``None``."""
    try:
        return await client.workflow(workflow).get(instance_id)
    except InstanceNotFoundError:
        return None


async def test_messages_for_unknown_workflows_are_dead_lettered(stack: Stack) -> None:
    async with stack.running([Approval]), broker_from_url(stack.broker_url,
                                                           stack.namespace) as outsider:
        await outsider.publish([
            OutgoingMessage("create", "no-such-workflow", b'{"params": 1}'),
            OutgoingMessage("events", "no-such-workflow.i1.go", b"{}"),
        ])
        reasons = []
        for _ in range(2):
            dead = await outsider.get_dead(timeout_s=10)  # type: ignore[attr-defined]
            assert dead is not None
            reasons.append(str(dead.headers[REASON_HEADER]))
    assert all("no workflow named 'no-such-workflow'" in r for r in reasons)


class LateWorkflow(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("echo", lambda: event.payload)


async def test_a_create_sent_before_any_worker_served_its_workflow_runs_once_one_does(
    stack: Stack,
) -> None:
    """Published before any queue for its workflow existed, the create waits among the
    unroutable messages; the first worker that serves the workflow routes it again."""
    async with broker_from_url(stack.broker_url, stack.namespace) as early:
        await early.publish([
            OutgoingMessage("create", "late-workflow", b'{"id": "early-bird", "params": 5}'),
            # No binding routes this key, now or later: refused once, not sent round again.
            OutgoingMessage("create", "late-workflow.x", b'{"id": "lost", "params": 6}'),
        ])
        async with stack.running([LateWorkflow]) as client:
            inst = await eventually(lambda: _get(client, "early-bird", "late-workflow"),
                                    timeout=15, message="the early create stored")
            st = await inst.wait_for_status("complete", timeout=15)
            dead = await early.get_dead(timeout_s=10)  # type: ignore[attr-defined]
        assert st.output == 5
        assert dead is not None and dead.body == b'{"id": "lost", "params": 6}'
        assert "no workflow named 'late-workflow.x'" in str(dead.headers[REASON_HEADER])
        assert await early.get_dead(timeout_s=0.5) is None  # type: ignore[attr-defined]


async def test_create_and_event_from_a_c_client_amqp_publish(real_stack: Stack) -> None:
    """The wire protocol is language-neutral: rabbitmq-c's amqp-publish, no Python."""
    import shutil
    import subprocess
    from urllib.parse import unquote, urlsplit

    tool = shutil.which("amqp-publish")
    if tool is None:
        from tests.helpers import in_ci

        if in_ci():
            pytest.fail("amqp-publish (Debian package amqp-tools) is missing; .ci/run installs it")
        pytest.skip("amqp-publish (amqp-tools) not installed")
    vhost = unquote(urlsplit(real_stack.broker_url).path[1:]) or "/"

    def publish(exchange: str, routing_key: str, body: str) -> None:
        subprocess.run([tool, "--server=127.0.0.1", "--username=guest", "--password=guest",
                        f"--vhost={vhost}", "-e", f"{real_stack.namespace}.{exchange}",
                        "-r", routing_key, "-p", "-C", "application/json", "-b", body],
                       check=True, timeout=30)

    async with real_stack.running([Approval]) as client:
        publish("create", "approval", '{"id": "from-c", "params": {"doc": "c"}}')
        inst = await eventually(lambda: _get(client, "from-c"), timeout=10)
        await inst.wait_for_status("waiting", timeout=10)
        publish("events", "approval.from-c.approval", '{"by": "a C program"}')
        st = await inst.wait_for_status("complete", timeout=10)
    assert st.output["approved_by"] == "a C program"


async def test_queued_events_are_stored_in_batches_and_a_bad_one_fails_alone(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine._turn_loop as turn_loop

    async with stack.running([Approval]) as client:
        instances = await client.workflow("approval").create_batch(
            [{"id": f"batch-{i}", "params": {"doc": i}} for i in range(20)])
        for inst in instances:
            await inst.wait_for_status("waiting", timeout=10)
    # No worker now: the events wait in the queue, as after an outage or a webhook burst.
    async with broker_from_url(stack.broker_url, stack.namespace) as relay:
        await relay.publish([
            *(OutgoingMessage("events", f"approval.{inst.id}.approval", b'{"by": "ops"}')
              for inst in instances[:10]),
            OutgoingMessage("events", "approval.ghost.approval", b"{}"),
            *(OutgoingMessage("events", f"approval.{inst.id}.approval", b'{"by": "ops"}')
              for inst in instances[10:]),
        ])
        transactions: list[list[str]] = []
        store = turn_loop.store_events_txn

        async def counted(conn: Any, workflow: str, incoming: Any, now: int) -> Any:
            transactions.append([e.instance_id for e in incoming])
            return await store(conn, workflow, incoming, now)

        monkeypatch.setattr(turn_loop, "store_events_txn", counted)
        async with stack.running([Approval], event_grace_s=0.5):
            for inst in instances:
                st = await inst.wait_for_status("complete", timeout=20)
                assert st.output["approved_by"] == "ops"
            dead = await relay.get_dead(timeout_s=10)  # type: ignore[attr-defined]
        assert dead is not None and "no instance 'ghost'" in str(dead.headers[REASON_HEADER])
    stored = [[i for i in t if i != "ghost"] for t in transactions]
    assert sum(map(len, stored)) == 20
    assert len([t for t in stored if t]) <= 10, transactions  # not one transaction per event
    # The ghost's event was held for its create, tried again, then dead-lettered.
    assert sum(t.count("ghost") for t in transactions) >= 2


class QuickApproval(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        approval = await step.wait_for_event("approval", "approval", timeout="4 seconds")
        return approval.payload


async def test_an_event_sent_from_another_process_on_the_embedded_broker_is_kept(
    namespace: str, sqlite_url: str,
) -> None:
    """A script beside `warren dev` shares its SQLite file but not its in-process broker: a
    message through its own broker reached no worker, and the event was lost."""
    stack = Stack("memory-sqlite", f"memory://{namespace}", sqlite_url, namespace)
    script = (
        "import asyncio, sys\n"
        "from sdk import Client, Instance\n"
        "async def main():\n"
        "    async with Client() as client:\n"
        "        await Instance(client, 'quick-approval', sys.argv[1]).send_event(\n"
        "            'approval', {'by': 'other process'})\n"
        "asyncio.run(main())\n")
    async with stack.running([QuickApproval]) as client:
        inst = await client.workflow("quick-approval").create()
        await inst.wait_for_status("waiting", timeout=10)
        sender = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, inst.id, env={**os.environ, **stack.env})
        assert await asyncio.wait_for(sender.wait(), timeout=30) == 0
        # Stored in SQL, it is there when the instance next runs (here, at the wait's
        # deadline): the wait gets it instead of timing out.
        st = await inst.wait_for_status(["complete", "errored"], timeout=20)
    assert st.status == "complete", st.error
    assert st.output == {"by": "other process"}
    wait = st.steps[0]["output"]  # the status JSON's times are ISO-8601 (API.md §6)
    assert wait["payload"] == {"by": "other process"}
    assert datetime.fromisoformat(wait["timestamp"]).tzinfo is not None


async def test_an_event_sent_right_after_its_create_waits_for_it_on_another_worker(
    stack: Stack,
) -> None:
    """Two workers: the create of an instance and its event, published one after the other,
    are often taken by different workers, and the event's may look before the create's has
    stored the instance. The event is held and tried again, not dead-lettered."""
    n = 60
    async with stack.worker([Approval]), stack.worker([Approval]), stack.client() as client, \
            broker_from_url(stack.broker_url, stack.namespace) as relay:
        for i in range(n):
            await relay.publish([
                OutgoingMessage("create", "approval",
                                orjson.dumps({"id": f"pair-{i}", "params": {"doc": i}})),
                OutgoingMessage("events", f"approval.pair-{i}.approval",
                                orjson.dumps({"by": f"relay-{i}"})),
            ])
        for i in range(n):
            inst = await eventually(lambda i=i: _get(client, f"pair-{i}"), timeout=30,
                                    message=f"pair-{i} stored")
            st = await inst.wait_for_status("complete", timeout=30)
            assert st.output["approved_by"] == f"relay-{i}"
        assert await relay.get_dead(timeout_s=0.5) is None  # type: ignore[attr-defined]


class TwoPings(WorkflowEntrypoint):
    """Counts the ``ping`` events it receives, waiting 2 s for a second one."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.wait_for_event("first", "ping", timeout="30 seconds")
        try:
            await step.wait_for_event("second", "ping", timeout="2 seconds")
        except WorkflowTimeoutError:
            return 1
        return 2


async def test_an_event_held_when_its_consumer_goes_away_is_stored_once(stack: Stack) -> None:
    """The broker gives a held event to another worker once its consumer is gone; the
    worker that held it must not store it as well (it has no message id to de-duplicate)."""
    workers = [stack.worker([TwoPings]), stack.worker([TwoPings])]
    async with workers[0], workers[1], stack.client() as client, \
            broker_from_url(stack.broker_url, stack.namespace) as relay:
        await relay.publish([OutgoingMessage("events", "two-pings.p-1.ping", b"{}")])
        holder = await eventually(
            lambda: next((w for w in workers if len(w._turns._early_events)), None),
            timeout=10, message="a worker holds the event")
        await holder._consumers[0].cancel()  # as when its channel is lost
        inst = await client.workflow("two-pings").create(id="p-1")
        st = await inst.wait_for_status("complete", timeout=30)
    assert st.output == 1
