"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.simulator import Simulation


@pytest.fixture(params=["replayed", "resumed"])
def both_turn_kinds(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run the test twice: every turn replaying from history, and turns resuming in memory
    wherever the worker would (each checked against a replay; see the simulator)."""
    Simulation.resume_by_default = request.param == "resumed"
    yield
    Simulation.resume_by_default = False
