"""Group commit of concurrent creates (engine/_create_group.py), on every stack: callers that
create at the same time share transactions, yet each one succeeds or fails on its own."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
import pytest

from broker import Delivery, broker_from_url
from engine._client_backend import EngineClientBackend
from engine._create_group import CreateGroups
from sdk import (
    Client,
    InstanceExistsError,
    ValidationError,
)
from tests.helpers import eventually
from tests.stacks import Stack


def _groups(client: Client) -> CreateGroups:
    return cast(EngineClientBackend, client._backend)._creates


async def _ids(client: Client, workflow: str, status: str | None = None) -> set[str]:
    page = await client.workflow(workflow).list(status=status, limit=1000)
    assert page.next_cursor is None
    return {i.id for i in page.items}


async def test_concurrent_creates_share_transactions_and_each_is_announced(
    stack: Stack,
) -> None:
    async with stack.client() as client:
        wf = client.workflow("echo")
        before = _groups(client).transactions
        created = await asyncio.gather(*(wf.create(params={"n": n}) for n in range(200)))
        transactions = _groups(client).transactions - before
        ids = [i.id for i in created]
        assert len(set(ids)) == 200
        # Coalesced: far fewer transactions than calls.
        assert transactions < 200 / 4, transactions
        # Committed when create returned.
        assert await _ids(client, "echo") == set(ids)
        # Published when create returned: each caller's own create message is in the queue.
        announced: dict[str, Any] = {}
        async with broker_from_url(stack.broker_url, stack.namespace) as raw:

            async def take(delivery: Delivery) -> None:
                body = orjson.loads(delivery.body)
                announced[body["id"]] = body["params"]
                await delivery.ack()

            consumer = await raw.consume("echo", take, prefetch=50)
            await eventually(lambda: len(announced) >= 200, timeout=10,
                             message="200 create messages")
            await consumer.cancel()
    assert announced == {i.id: {"n": n} for n, i in enumerate(created)}


async def test_a_taken_id_fails_only_its_own_caller_in_a_group(stack: Stack) -> None:
    async with stack.client() as client:
        wf = client.workflow("grouped")
        await wf.create(params="first", id="taken")
        fallbacks = _groups(client).fallbacks
        calls = [wf.create(params=n, id=f"fresh-{n}") for n in range(20)]
        calls.insert(10, wf.create(params="second", id="taken"))
        # Two callers choosing the same new id in one group: exactly one of them wins.
        calls += [wf.create(params="a", id="twice"), wf.create(params="b", id="twice")]
        results = await asyncio.gather(*calls, return_exceptions=True)
        # The group failed as a whole and was retried caller by caller.
        assert _groups(client).fallbacks > fallbacks
        assert isinstance(results[10], InstanceExistsError), results[10]
        assert "taken" in str(results[10])
        fresh = results[:10] + results[11:21]
        assert not [r for r in fresh if isinstance(r, BaseException)], fresh
        twice = results[21:]
        assert sum(isinstance(r, InstanceExistsError) for r in twice) == 1, twice
        assert await _ids(client, "grouped") == {
            "taken", "twice", *(f"fresh-{n}" for n in range(20))}
        assert (await (await wf.get("taken")).status()).params == "first"


async def test_a_batch_in_a_group_stays_all_or_nothing(stack: Stack) -> None:
    async with stack.client() as client:
        wf = client.workflow("grouped")
        await wf.create(id="taken")
        results = await asyncio.gather(
            *(wf.create(id=f"single-{n}") for n in range(5)),
            wf.create_batch([{"id": "batch-1"}, {"id": "taken"}, {"id": "batch-2"}]),
            wf.create_batch([{"id": "batch-3"}, {"id": "batch-4"}]),
            return_exceptions=True,
        )
        assert isinstance(results[5], InstanceExistsError), results[5]
        assert not [r for i, r in enumerate(results) if i != 5 and isinstance(r, BaseException)]
        assert await _ids(client, "grouped") == {
            "taken", "batch-3", "batch-4", *(f"single-{n}" for n in range(5))}


async def test_a_cancelled_caller_does_not_break_the_others(stack: Stack) -> None:
    async with stack.client() as client:
        wf = client.workflow("grouped")
        tasks = [asyncio.create_task(wf.create(id=f"c-{n}")) for n in range(30)]
        # One turn of the loop: every caller is now in line (a connected client queues a
        # create without awaiting anything first), and the writer has not yet taken them.
        await asyncio.sleep(0)
        tasks[7].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[7], asyncio.CancelledError), done[7]
        assert not [r for i, r in enumerate(done) if i != 7 and isinstance(r, BaseException)]
        # Cancelled while waiting: left out of the write, as if it had never called.
        assert await _ids(client, "grouped") == {f"c-{n}" for n in range(30) if n != 7}
        # The line keeps working after a cancellation.
        assert (await wf.create(id="after")).id == "after"


async def test_a_lone_create_goes_through_and_validation_stays_at_the_caller(
    stack: Stack,
) -> None:
    async with stack.client() as client:
        wf = client.workflow("grouped")
        before = _groups(client).transactions
        for n in range(3):
            inst = await wf.create(params={"n": n}, id=f"lone-{n}")
            assert inst.id == f"lone-{n}"
            assert (await inst.status()).params == {"n": n}
        generated = await wf.create(params=None)
        assert len(generated.id) == 32
        assert _groups(client).transactions - before == 4  # one each, nothing held back
        with pytest.raises(ValidationError):
            await wf.create(params={"not json": object()})
        with pytest.raises(InstanceExistsError, match="lone-0"):
            await wf.create(id="lone-0")
        assert _groups(client).transactions - before == 5  # the invalid one was never queued


async def test_a_stored_create_whose_message_the_broker_refuses_still_runs(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row is committed before the create message is published; if the publish fails,
    the caller is not told the create failed (a retry would find the id taken), and the
    workers' sweeper starts the instance from SQL."""
    from broker import PublishError
    from tests.integration.test_engine import Unique

    async with stack.running([Unique]) as client:
        backend = cast(EngineClientBackend, client._backend)

        async def refused(*_args: Any) -> None:
            raise PublishError("the broker is gone")

        monkeypatch.setattr(backend._creates, "_announce", refused)
        inst = await client.workflow("unique").create(params={"n": 1}, id="unannounced")
        monkeypatch.undo()
        st = await inst.wait_for_status("complete", timeout=30)
    assert st.output == {"n": 1}
