"""Which lifecycle events a process publishes (``WARREN_LIFECYCLE_EVENTS``)."""

from __future__ import annotations

import orjson
import pytest

from engine import Settings
from engine._lifecycle import LifecycleEvents
from sdk import ValidationError

EVENTS = [("instance.started", {}), ("step.started", {"step": "s1"}),
          ("progress", {"data": 1}), ("rollback.started", {}),
          ("instance.complete", {"output": 3})]


@pytest.mark.parametrize(("level", "published"), [
    ("all", ["instance.started", "step.started", "progress", "rollback.started",
             "instance.complete"]),
    ("instance", ["instance.started", "instance.complete"]),
    ("none", []),
])
def test_each_level_publishes_its_kinds(level: str, published: list[str]) -> None:
    messages = LifecycleEvents(level).messages("wf", "i1", EVENTS)
    assert [m.routing_key for m in messages] == [f"wf.i1.{kind}" for kind in published]
    for message in messages:
        body = orjson.loads(message.body)
        assert message.exchange == "lifecycle"
        assert body["instance_id"] == "i1" and body["kind"] in published


def test_the_default_is_every_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARREN_LIFECYCLE_EVENTS", raising=False)
    assert Settings.from_env().lifecycle_events == "all"
    monkeypatch.setenv("WARREN_LIFECYCLE_EVENTS", "instance")
    assert Settings.from_env().lifecycle_events == "instance"
    assert Settings.from_env(lifecycle_events="none").lifecycle_events == "none"


def test_an_unknown_level_is_refused_saying_what_is_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WARREN_LIFECYCLE_EVENTS", "steps")
    with pytest.raises(ValidationError, match=r"WARREN_LIFECYCLE_EVENTS.*all, instance, none"):
        Settings.from_env()
    monkeypatch.delenv("WARREN_LIFECYCLE_EVENTS")
    with pytest.raises(ValidationError, match="got 'off'"):
        Settings.from_env(lifecycle_events="off")
