"""The pure naming and routing functions of the broker topology."""

from __future__ import annotations

import random

import pytest

from broker import OutgoingMessage
from broker._topology import Topology, topic_matches, validate_message, validate_workflow_name


def test_names_carry_the_namespace() -> None:
    t = Topology("acme")
    assert t.exchange("create") == "acme.create"
    assert t.exchange("dead") == "acme.dead"
    assert t.dead_queue == "acme.dead"
    assert t.workflow_queue("orders") == "acme.workflow.orders"
    assert t.workflow_queue_arguments() == {"x-dead-letter-exchange": "acme.dead",
                                            "x-max-priority": 1}
    assert t.workflow_bindings("orders") == [
        ("acme.create", "orders"),
        ("acme.events", "orders.#"),
        ("acme.internal", "orders"),
        ("acme.delay.deliver", "#.orders"),
    ]
    assert Topology().exchange("events") == "warren.events"


@pytest.mark.parametrize("name", ["", "-x", "a.b", "a*", "a#", "x" * 65, "a b"])
def test_invalid_workflow_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        validate_workflow_name(name)


def test_invalid_topologies_are_rejected() -> None:
    with pytest.raises(ValueError):
        Topology("")
    with pytest.raises(ValueError):
        Topology("ns", delay_levels=0)


def test_default_levels_cover_a_year_in_one_pass() -> None:
    t = Topology()
    assert t.delay_levels == 35
    assert t.max_delay_ms == 2**35 - 1 >= 366 * 24 * 3600 * 1000


def test_delay_routing_key_spells_the_delay_most_significant_bit_first() -> None:
    t = Topology("ns", delay_levels=5)
    assert t.delay_routing_key(5, "wf") == "0.0.1.0.1.wf"
    assert t.delay_routing_key(31, "wf") == "1.1.1.1.1.wf"
    assert t.delay_routing_key(1, "wf") == "0.0.0.0.1.wf"
    for bad in (0, 32, -1):
        with pytest.raises(ValueError):
            t.delay_routing_key(bad, "wf")
    with pytest.raises(ValueError):
        t.delay_routing_key(3, "a.b")


def test_level_bindings_route_to_the_highest_set_bit_below() -> None:
    t = Topology("ns", delay_levels=5)
    assert t.delay_queue_bindings(4) == [
        (4, "1.#"),
        (3, "0.1.#"),
        (2, "0.0.1.#"),
        (1, "0.0.0.1.#"),
        (0, "0.0.0.0.1.#"),
    ]
    assert t.delay_deliver_binding(4) == "0.0.0.0.0.#"
    assert t.delay_queue_bindings(2) == [(2, "*.*.1.#"), (1, "*.*.0.1.#"), (0, "*.*.0.0.1.#")]
    assert t.delay_deliver_binding(2) == "*.*.0.0.0.#"
    assert t.delay_queue_bindings(0) == [(0, "*.*.*.*.1.#")]
    assert t.delay_deliver_binding(0) == "*.*.*.*.0.#"
    assert t.delay_ttl_ms(0) == 1 and t.delay_ttl_ms(4) == 16
    assert t.delay_next_exchange(3) == "ns.delay.2"
    assert t.delay_next_exchange(0) == "ns.delay.deliver"
    assert t.delay_queue_arguments(3) == {
        "x-message-ttl": 8,
        "x-dead-letter-exchange": "ns.delay.2",
    }
    assert t.delay_entry_exchange == "ns.delay.4"
    with pytest.raises(ValueError):
        t.delay_queue_bindings(5)


def _simulate(t: Topology, delay_ms: int, workflow: str) -> tuple[int, list[int], bool]:
    """Route a delayed message the way RabbitMQ would, using only the topology's bindings.

    Returns the total time spent in level queues, the levels visited in order, and whether
    the message reached the workflow's queue (and no other).
    """
    key = t.delay_routing_key(delay_ms, workflow)
    exchange = t.delay_entry_exchange
    waited, visited = 0, []
    while exchange != t.delay_deliver_exchange:
        level = int(exchange.rsplit(".", 1)[1])
        queues = [m for m, pattern in t.delay_queue_bindings(level) if topic_matches(pattern, key)]
        onward = topic_matches(t.delay_deliver_binding(level), key)
        assert len(queues) + onward == 1, "every key takes exactly one way out of an exchange"
        if onward:
            break
        waited += t.delay_ttl_ms(queues[0])
        visited.append(queues[0])
        exchange = t.delay_next_exchange(queues[0])  # the queue's dead-letter exchange
    delivered = [w for w in (workflow, "other") if topic_matches(f"#.{w}", key)]
    return waited, visited, delivered == [workflow]


def test_every_delay_waits_exactly_its_length_visiting_each_level_once() -> None:
    small = Topology("ns", delay_levels=8)
    for delay in range(1, small.max_delay_ms + 1):
        waited, visited, delivered = _simulate(small, delay, "wf")
        assert waited == delay and delivered
        assert visited == [n for n in reversed(range(8)) if delay >> n & 1]
    full, rng = Topology(), random.Random(3)
    for delay in [
        1,
        full.max_delay_ms,
        2**34,
        *(rng.randint(1, full.max_delay_ms) for _ in range(300)),
    ]:
        waited, _, delivered = _simulate(full, delay, "0")  # a name that looks like a bit
        assert waited == delay and delivered


def test_long_delays_are_split_never_shortened() -> None:
    t = Topology("ns", delay_levels=4)
    assert t.split_delay(10) == (10, 0)
    assert t.split_delay(15) == (15, 0)
    assert t.split_delay(100) == (15, 85)
    assert Topology().split_delay(400 * 86_400_000) == (2**35 - 1, 400 * 86_400_000 - 2**35 + 1)


def test_deliveries_map_back_to_logical_names() -> None:
    t = Topology("ns", delay_levels=5)
    assert t.logical_exchange("ns.create") == "create"
    assert t.logical_exchange("ns.internal") == "internal"
    assert t.logical_exchange("ns.delay.3") == "internal"
    assert t.logical_exchange("ns.delay.deliver") == "internal"
    assert t.logical_exchange("other.create") is None
    assert t.logical_exchange("") is None
    assert t.logical_routing_key("ns.delay.deliver", "0.0.1.0.1.wf") == "wf"
    assert t.logical_routing_key("ns.events", "wf.i.e") == "wf.i.e"


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.*.c", "a.b.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("a.#", "ab.c", False),
        ("#.a", "x.y.a", True),
        ("#", "anything.at.all", True),
        ("#.b.#", "a.b.c", True),
        ("#.b.#", "a.c", False),
        ("*", "a.b", False),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
        ("a.#.c", "a.x.y", False),
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
        ("*.*.1.#", "0.0.1.wf", True),
        ("*.*.1.#", "0.1.1.wf", True),
        ("*.*.1.#", "0.0.0.wf", False),
    ],
)
def test_topic_matching(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_message_validation() -> None:
    validate_message(OutgoingMessage("internal", "wf", b"", delay_ms=5))
    validate_message(OutgoingMessage("events", "wf.i.e", b""))
    for bad in (
        OutgoingMessage("create", "wf", b"", delay_ms=5),
        OutgoingMessage("internal", "wf", b"", delay_ms=-1),
        OutgoingMessage("internal", "not.a.name", b"", delay_ms=5),
    ):
        with pytest.raises(ValueError):
            validate_message(bad)
