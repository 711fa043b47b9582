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
        Topology("ns", delay_bits=0)


def test_default_topology_covers_a_year_in_one_pass() -> None:
    t = Topology()
    assert t.delay_bits == 35
    assert t.max_delay_ms == 2**35 - 1 >= 366 * 24 * 3600 * 1000
    assert t.delay_positions == 9
    assert list(t.delay_digits(8)) == list(range(1, 8))  # 2**35 - 1 is 0x7ffffffff
    assert len(t.delay_queues()) == 8 * 15 + 7


def test_delay_routing_key_spells_the_delay_in_hexadecimal_most_significant_first() -> None:
    t = Topology("ns", delay_bits=10)  # 3 digits, the top one 0..3
    assert t.delay_routing_key(5, "wf") == "0.0.5.wf"
    assert t.delay_routing_key(0x3FF, "wf") == "3.f.f.wf"
    assert t.delay_routing_key(0x2A0, "wf") == "2.a.0.wf"
    for bad in (0, 0x400, -1):
        with pytest.raises(ValueError):
            t.delay_routing_key(bad, "wf")
    with pytest.raises(ValueError):
        t.delay_routing_key(3, "a.b")


def test_position_bindings_route_to_the_highest_non_zero_digit_below() -> None:
    t = Topology("ns", delay_bits=10)
    hexdigits = "123456789abcdef"
    assert t.delay_queue_bindings(2) == [
        *(((2, d), f"{d}.#") for d in (1, 2, 3)),
        *(((1, d), f"0.{hexdigits[d - 1]}.#") for d in range(1, 16)),
        *(((0, d), f"0.0.{hexdigits[d - 1]}.#") for d in range(1, 16)),
    ]
    assert t.delay_deliver_binding(2) == "0.0.0.#"
    assert t.delay_queue_bindings(0) == [((0, d), f"*.*.{hexdigits[d - 1]}.#")
                                         for d in range(1, 16)]
    assert t.delay_deliver_binding(0) == "*.*.0.#"
    assert t.delay_queue(1, 10) == "ns.delay.hex1.a"
    assert t.delay_ttl_ms(0, 1) == 1 and t.delay_ttl_ms(1, 10) == 160
    assert t.delay_ttl_ms(2, 3) == 3 * 256
    assert t.delay_next_exchange(2) == "ns.delay.hex1"
    assert t.delay_next_exchange(0) == "ns.delay.deliver"
    assert t.delay_queue_arguments(1, 2) == {
        "x-message-ttl": 32,
        "x-dead-letter-exchange": "ns.delay.hex0",
    }
    assert t.delay_entry_exchange == "ns.delay.hex2"
    for position, digit in ((3, 1), (2, 4), (0, 0), (0, 16)):
        with pytest.raises(ValueError):
            t.delay_queue(position, digit)
    with pytest.raises(ValueError):
        t.delay_queue_bindings(3)


def _simulate(t: Topology, delay_ms: int, workflow: str) -> tuple[int, list[tuple[int, int]], bool]:
    """Route a delayed message the way RabbitMQ would, using only the topology's bindings.

    Returns the total time spent in delay queues, the queues visited in order, and whether the
    message reached the workflow's queue (and no other).
    """
    key = t.delay_routing_key(delay_ms, workflow)
    exchange = t.delay_entry_exchange
    waited, visited = 0, []
    while exchange != t.delay_deliver_exchange:
        position = int(exchange.rsplit(".", 1)[1].removeprefix("hex"))
        queues = [q for q, pattern in t.delay_queue_bindings(position)
                  if topic_matches(pattern, key)]
        onward = topic_matches(t.delay_deliver_binding(position), key)
        assert len(queues) + onward == 1, "every key takes exactly one way out of an exchange"
        if onward:
            break
        waited += t.delay_ttl_ms(*queues[0])
        visited.append(queues[0])
        exchange = t.delay_next_exchange(queues[0][0])  # the queue's dead-letter exchange
    delivered = [w for w in (workflow, "other") if topic_matches(f"#.{w}", key)]
    return waited, visited, delivered == [workflow]


def test_every_delay_waits_exactly_its_length_once_per_non_zero_digit() -> None:
    small = Topology("ns", delay_bits=10)
    for delay in range(1, small.max_delay_ms + 1):
        waited, visited, delivered = _simulate(small, delay, "wf")
        assert waited == delay and delivered
        assert visited == [(p, delay >> 4 * p & 15) for p in (2, 1, 0) if delay >> 4 * p & 15]
    full, rng = Topology(), random.Random(3)
    for delay in [
        1,
        full.max_delay_ms,
        2**34,
        *(rng.randint(1, full.max_delay_ms) for _ in range(300)),
    ]:
        waited, _, delivered = _simulate(full, delay, "0")  # a name that looks like a digit
        assert waited == delay and delivered


def test_long_delays_are_split_never_shortened() -> None:
    t = Topology("ns", delay_bits=4)
    assert t.split_delay(10) == (10, 0)
    assert t.split_delay(15) == (15, 0)
    assert t.split_delay(100) == (15, 85)
    assert Topology().split_delay(400 * 86_400_000) == (2**35 - 1, 400 * 86_400_000 - 2**35 + 1)


def test_deliveries_map_back_to_logical_names() -> None:
    t = Topology("ns", delay_bits=5)
    assert t.logical_exchange("ns.create") == "create"
    assert t.logical_exchange("ns.internal") == "internal"
    assert t.logical_exchange("ns.delay.hex1") == "internal"
    assert t.logical_exchange("ns.delay.deliver") == "internal"
    assert t.logical_exchange("other.create") is None
    assert t.logical_exchange("") is None
    assert t.logical_routing_key("ns.delay.deliver", "1.a.wf") == "wf"
    # A binary key of an earlier version, still on its way through the old queues: they end
    # in the same deliver exchange.
    assert t.delay_deliver_exchange == "ns.delay.deliver"
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
