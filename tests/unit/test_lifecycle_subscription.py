"""The client's lifecycle subscription when binding fails (the broker unreachable mid-bind)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.memory import MemoryBroker, MemorySubscription
from engine._client_backend import _LifecycleSubscription


async def test_a_subscription_that_failed_to_bind_is_unregistered_and_can_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = MemoryBroker()
    await broker.connect()
    failures = [ConnectionError("broker went away while binding")]
    real_start = MemorySubscription.start

    async def start_failing_once(self: MemorySubscription) -> None:
        if failures:
            raise failures.pop()
        await real_start(self)

    monkeypatch.setattr(MemorySubscription, "start", start_failing_once)

    async def connect() -> None:
        pass

    subscription = _LifecycleSubscription(broker, connect, "wf.*.#")
    try:
        with pytest.raises(ConnectionError):
            await subscription.start()
        registered: Any = broker._subscriptions
        assert not registered, "the failed binding stays registered with the broker"
        await subscription.start()  # binds anew
        assert len(registered) == 1
        await subscription.aclose()
        assert not registered
    finally:
        await broker.close()
