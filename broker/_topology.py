"""Names, routing keys and bindings of Warren's broker topology, as pure functions.

Everything here is deterministic and free of I/O so that it can be unit-tested and shared by
both broker implementations. Real names carry a namespace prefix (``warren`` by default):

- ``{ns}.create`` (direct), ``{ns}.events`` (topic), ``{ns}.lifecycle`` (topic),
  ``{ns}.internal`` (direct), ``{ns}.dead`` (fanout, bound to the durable queue ``{ns}.dead``).
- ``{ns}.workflow.{name}``: one durable queue per workflow, dead-lettering to ``{ns}.dead``.
- Delayed delivery without plugins: the delay is written in hexadecimal, one routing-key word
  per digit, most significant first, followed by the workflow name (``0.0.2.7.1.0.<workflow>``
  is 0x2710 = 10,000 ms with 6 digits). Digit position ``p`` has a topic exchange
  ``{ns}.delay.hex{p}`` and one queue ``{ns}.delay.hex{p}.{d}`` per digit value ``d`` (1..f)
  that holds every message for exactly ``d * 16**p`` ms (``x-message-ttl``) and then
  dead-letters it to the exchange of position ``p - 1`` (position 0 to ``{ns}.delay.deliver``).
  A delayed message is published to the top position's exchange. Position ``p``'s exchange
  routes a key to the queue of the highest non-zero digit at or below ``p`` (digits ``p..t+1``
  are ``0``, digit ``t`` is ``d``), or to the deliver exchange when digits ``p..0`` are all
  ``0``. So a message waits in one queue per non-zero digit, and the TTLs add up to the delay.
  All messages of one queue share its TTL, so each queue expires in FIFO order and a long delay
  never holds back a short one.

  Why hexadecimal: every queue a message passes through is one dead-letter hop, and the hops
  are what makes a delay late under load. A random delay of up to 20 s has about 7 set bits
  but under 4 non-zero hex digits, and its routing key has 9 words instead of 35.

  The minimal form (a position binds only its own digit, forwarding ``0`` to the position below
  with an exchange-to-exchange binding) routes identically, but RabbitMQ's exchange-to-exchange
  hops are costly: measured 7x slower delayed publishes and much later arrivals under load, so
  each exchange binds every lower queue directly instead.

  Earlier versions wrote delays in binary through ``{ns}.delay.{n}`` exchanges and queues. Those
  names are not reused: in a namespace that has them, messages still in them reach
  ``{ns}.delay.deliver`` as before, and the old queues can be deleted once they are empty.

Changing ``delay_bits`` for a namespace that already exists is not supported: the position
exchanges' bindings depend on it, so every process using a namespace must use the same value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from broker._base import Exchange, OutgoingMessage

DEFAULT_NAMESPACE: Final = "warren"
DEFAULT_DELAY_BITS: Final = 35
"""2**35 - 1 ms is about 397 days: every delay up to a year fits in one pass."""

_DIGIT_BITS: Final = 4  # hexadecimal digits: see the module docstring for why

REMAINING_DELAY_HEADER: Final = "x-warren-delay-remaining-ms"
"""Internal header: the part of a delay beyond the topology's maximum, re-delayed on arrival."""

EXCHANGE_TYPES: Final[Mapping[Exchange, str]] = {
    "create": "direct",
    "events": "topic",
    "lifecycle": "topic",
    "dead": "fanout",
    "internal": "direct",
}

UNCHECKED_EXCHANGES: Final[frozenset[Exchange]] = frozenset({"lifecycle"})
"""Exchanges published to without ``mandatory``.

Lifecycle messages are notifications for whoever listens "from now on"; with no subscriber they
have no queue, and refusing them would fail every turn of an unobserved engine.
"""

_WORKFLOW_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


def validate_workflow_name(name: str) -> str:
    """Return ``name`` if it is a valid workflow name (it becomes one routing-key word).

    Raises:
        ValueError: The name is not ``[A-Za-z0-9_][A-Za-z0-9_-]*`` of at most 64 characters.
    """
    if not _WORKFLOW_NAME.fullmatch(name):
        raise ValueError(
            f"invalid workflow name {name!r}: need at most 64 of [A-Za-z0-9_-], "
            "not starting with '-'"
        )
    return name


def validate_message(message: OutgoingMessage) -> None:
    """Check what no broker accepts: negative delays, and delays outside ``internal``.

    Raises:
        ValueError: The message can not be published as given.
    """
    if message.exchange not in EXCHANGE_TYPES:
        raise ValueError(f"unknown exchange {message.exchange!r}")
    if message.delay_ms < 0:
        raise ValueError(f"delay_ms must be >= 0, got {message.delay_ms}")
    if message.delay_ms and message.exchange != "internal":
        raise ValueError(
            f"delay_ms is only allowed on the 'internal' exchange, not {message.exchange!r}"
        )
    if message.delay_ms:
        validate_workflow_name(message.routing_key)


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more words."""
    tokens, words = pattern.split("."), routing_key.split(".")
    if "#" not in tokens[:-1]:  # the common shapes: no "#", or only a trailing one
        if tokens[-1] == "#":
            tokens = tokens[:-1]
        elif len(tokens) != len(words):
            return False
        return len(words) >= len(tokens) and all(
            token in ("*", word) for token, word in zip(tokens, words, strict=False)
        )
    # reach[j]: the pattern words seen so far can match exactly the first j routing-key words.
    reach = [True] + [False] * len(words)
    for token in tokens:
        if token == "#":
            for j in range(1, len(words) + 1):
                reach[j] = reach[j] or reach[j - 1]
        else:
            reach = [False] + [reach[j] and token in ("*", words[j]) for j in range(len(words))]
    return reach[-1]


@dataclass(frozen=True, slots=True)
class Topology:
    """The real names and bindings for one namespace.

    Attributes:
        namespace: Prefix of every exchange and queue name.
        delay_bits: The longest single-pass delay is ``2**delay_bits - 1`` ms.
    """

    namespace: str = DEFAULT_NAMESPACE
    delay_bits: int = DEFAULT_DELAY_BITS

    def __post_init__(self) -> None:
        if not _NAMESPACE.fullmatch(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}")
        if not 1 <= self.delay_bits <= 48:
            raise ValueError(f"delay_bits must be in 1..48, got {self.delay_bits}")

    def exchange(self, logical: Exchange) -> str:
        """Real name of a logical exchange."""
        return f"{self.namespace}.{logical}"

    @property
    def unroutable(self) -> str:
        """Alternate exchange of ``create`` and ``events``, and the queue bound to it."""
        return f"{self.namespace}.unroutable"

    def exchange_arguments(self, logical: Exchange) -> dict[str, str]:
        """Declare arguments: contract inputs fall back to :meth:`unroutable`."""
        if logical in ("create", "events"):
            return {"alternate-exchange": self.unroutable}
        return {}

    @property
    def dead_queue(self) -> str:
        """The durable queue that retains dead-lettered messages."""
        return f"{self.namespace}.dead"

    def workflow_queue(self, workflow: str) -> str:
        """The durable work queue of one workflow."""
        return f"{self.namespace}.workflow.{validate_workflow_name(workflow)}"

    def workflow_queue_arguments(self) -> dict[str, str | int]:
        """Arguments of every workflow queue (must never change for an existing queue)."""
        return {"x-dead-letter-exchange": self.exchange("dead"), "x-max-priority": 1}

    def workflow_bindings(self, workflow: str) -> list[tuple[str, str]]:
        """``(exchange, binding key)`` pairs that feed a workflow's queue."""
        validate_workflow_name(workflow)
        return [
            (self.exchange("create"), workflow),
            (self.exchange("events"), f"{workflow}.#"),
            (self.exchange("internal"), workflow),
            (self.delay_deliver_exchange, f"#.{workflow}"),
        ]

    # -- delayed delivery -------------------------------------------------------------------

    @property
    def max_delay_ms(self) -> int:
        """The longest delay one pass through the positions can express."""
        return (1 << self.delay_bits) - 1

    @property
    def delay_positions(self) -> int:
        """Number of hexadecimal digits of a delay, and of position exchanges."""
        return -(-self.delay_bits // _DIGIT_BITS)

    @property
    def delay_deliver_exchange(self) -> str:
        """Topic exchange where delays end; workflow queues bind ``#.<workflow>`` to it."""
        return f"{self.namespace}.delay.deliver"

    @property
    def delay_entry_exchange(self) -> str:
        """The top position's exchange: every delayed message is published here."""
        return self.delay_exchange(self.delay_positions - 1)

    def delay_exchange(self, position: int) -> str:
        """Topic exchange of a digit position."""
        return f"{self.namespace}.delay.hex{self._position(position)}"

    def delay_digits(self, position: int) -> range:
        """The non-zero digit values a delay can have at a position (the top one may be short)."""
        highest = self.max_delay_ms >> (_DIGIT_BITS * self._position(position))
        return range(1, min(highest, (1 << _DIGIT_BITS) - 1) + 1)

    def delay_queues(self) -> list[tuple[int, int]]:
        """Every ``(position, digit)`` that has a queue."""
        return [(p, d) for p in range(self.delay_positions) for d in self.delay_digits(p)]

    def delay_queue(self, position: int, digit: int) -> str:
        """Queue of a digit at a position; every message in it waits ``delay_ttl_ms``."""
        return f"{self.delay_exchange(position)}.{self._digit(position, digit):x}"

    def delay_ttl_ms(self, position: int, digit: int) -> int:
        """TTL of a queue: ``digit * 16**position`` ms."""
        return self._digit(position, digit) << (_DIGIT_BITS * position)

    def delay_next_exchange(self, position: int) -> str:
        """Where a position's queues dead-letter to."""
        if self._position(position) == 0:
            return self.delay_deliver_exchange
        return self.delay_exchange(position - 1)

    def delay_queue_arguments(self, position: int, digit: int) -> dict[str, int | str]:
        """Arguments of a queue (must never change for an existing queue)."""
        return {
            "x-message-ttl": self.delay_ttl_ms(position, digit),
            "x-dead-letter-exchange": self.delay_next_exchange(position),
        }

    def delay_queue_bindings(self, position: int) -> list[tuple[tuple[int, int], str]]:
        """``((position, digit) of a queue, binding key)`` pairs of a position's exchange.

        The digit of position ``p`` is word ``delay_positions - 1 - p`` of the routing key; the
        key goes to the queue of the highest non-zero digit at or below ``position``.
        """
        skip = ["*"] * (self.delay_positions - 1 - self._position(position))
        return [
            ((target, digit), ".".join([*skip, *["0"] * (position - target), f"{digit:x}", "#"]))
            for target in range(position, -1, -1)
            for digit in self.delay_digits(target)
        ]

    def delay_deliver_binding(self, position: int) -> str:
        """Binding key from a position's exchange to the deliver exchange: digits ``position..0``
        all zero."""
        skip = ["*"] * (self.delay_positions - 1 - self._position(position))
        return ".".join([*skip, *["0"] * (position + 1), "#"])

    def split_delay(self, delay_ms: int) -> tuple[int, int]:
        """Split a delay into ``(this pass, remaining)``; remaining is re-delayed on arrival."""
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        first = min(delay_ms, self.max_delay_ms)
        return first, delay_ms - first

    def delay_routing_key(self, delay_ms: int, workflow: str) -> str:
        """Routing key that carries a message through the positions in exactly ``delay_ms``.

        Raises:
            ValueError: ``delay_ms`` is not in ``1..max_delay_ms`` or the workflow name is
                invalid.
        """
        if not 1 <= delay_ms <= self.max_delay_ms:
            raise ValueError(f"delay_ms must be in 1..{self.max_delay_ms}, got {delay_ms}")
        digits = format(delay_ms, f"0{self.delay_positions}x")
        return ".".join([*digits, validate_workflow_name(workflow)])

    def is_delay_exchange(self, exchange: str) -> bool:
        """Whether a real exchange name belongs to the delay topology."""
        return exchange.startswith(f"{self.namespace}.delay.")

    # -- mapping deliveries back ------------------------------------------------------------

    def logical_exchange(self, exchange: str) -> Exchange | None:
        """The logical exchange a real exchange name stands for (delays count as internal)."""
        if self.is_delay_exchange(exchange):
            return "internal"
        prefix = f"{self.namespace}."
        if exchange.startswith(prefix):
            name = exchange[len(prefix) :]
            for logical in EXCHANGE_TYPES:
                if logical == name:
                    return logical
        return None

    def logical_routing_key(self, exchange: str, routing_key: str) -> str:
        """The routing key as published: delayed keys lose their delay digits."""
        if self.is_delay_exchange(exchange):
            # The workflow name has no dots, and is last whatever the digits (or the binary
            # keys of earlier versions still on their way).
            return routing_key.rsplit(".", 1)[-1]
        return routing_key

    def _position(self, position: int) -> int:
        if not 0 <= position < self.delay_positions:
            raise ValueError(
                f"position must be in 0..{self.delay_positions - 1}, got {position}"
            )
        return position

    def _digit(self, position: int, digit: int) -> int:
        if digit not in self.delay_digits(position):
            raise ValueError(f"no digit {digit} at position {position}")
        return digit
