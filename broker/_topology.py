"""Names, routing keys and bindings of Warren's broker topology, as pure functions.

Everything here is deterministic and free of I/O so that it can be unit-tested and shared by
both broker implementations. Real names carry a namespace prefix (``warren`` by default):

- ``{ns}.create`` (direct), ``{ns}.events`` (topic), ``{ns}.lifecycle`` (topic),
  ``{ns}.internal`` (direct), ``{ns}.dead`` (fanout, bound to the durable queue ``{ns}.dead``).
- ``{ns}.workflow.{name}``: one durable queue per workflow, dead-lettering to ``{ns}.dead``.
- Delayed delivery without plugins: ``delay_levels`` topic exchanges and queues
  ``{ns}.delay.{n}``; queue ``n`` holds every message for exactly ``2**n`` ms
  (``x-message-ttl``) and then dead-letters it to the exchange of level ``n - 1`` (level 0 to
  ``{ns}.delay.deliver``). A delayed message's routing key spells the delay in binary, most
  significant bit first, one word per bit, followed by the workflow name
  (``0.0.1.0.1.<workflow>`` is 5 ms with 5 levels). It is published to the top level's
  exchange. Level ``n``'s exchange routes a key to the queue of the highest set bit at or
  below ``n`` (one binding per lower level: bits ``n..m+1`` are ``0``, bit ``m`` is ``1``), or
  to the deliver exchange when bits ``n..0`` are all ``0``. So a message waits in exactly the
  levels of its set bits, each at most once, and the TTLs add up to the delay. All messages of
  one queue share its TTL, so each queue expires in FIFO order and a long delay never holds
  back a short one.

  The minimal form (level ``n`` binds only its own bit, forwarding ``0`` to level ``n - 1``
  with an exchange-to-exchange binding) routes identically, but RabbitMQ's
  exchange-to-exchange hops are costly: measured 7x slower delayed publishes and much later
  arrivals under load, so each level binds every lower queue directly instead.

Changing ``delay_levels`` for a namespace that already exists is not supported: the level
exchanges' bindings depend on it, so every process using a namespace must use the same value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from broker._base import Exchange, OutgoingMessage

DEFAULT_NAMESPACE: Final = "warren"
DEFAULT_DELAY_LEVELS: Final = 35
"""2**35 - 1 ms is about 397 days: every delay up to a year fits in one pass."""

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
        delay_levels: Number of delay levels; the longest single-pass delay is
            ``2**delay_levels - 1`` ms.
    """

    namespace: str = DEFAULT_NAMESPACE
    delay_levels: int = DEFAULT_DELAY_LEVELS

    def __post_init__(self) -> None:
        if not _NAMESPACE.fullmatch(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}")
        if not 1 <= self.delay_levels <= 48:
            raise ValueError(f"delay_levels must be in 1..48, got {self.delay_levels}")

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
        """The longest delay one pass through the levels can express."""
        return (1 << self.delay_levels) - 1

    @property
    def delay_deliver_exchange(self) -> str:
        """Topic exchange where delays end; workflow queues bind ``#.<workflow>`` to it."""
        return f"{self.namespace}.delay.deliver"

    @property
    def delay_entry_exchange(self) -> str:
        """The top level's exchange: every delayed message is published here."""
        return self.delay_exchange(self.delay_levels - 1)

    def delay_exchange(self, level: int) -> str:
        """Topic exchange of a level."""
        return f"{self.namespace}.delay.{self._level(level)}"

    def delay_queue(self, level: int) -> str:
        """Queue of a level; every message in it waits ``delay_ttl_ms(level)``."""
        return f"{self.namespace}.delay.{self._level(level)}"

    @staticmethod
    def delay_ttl_ms(level: int) -> int:
        """TTL of a level's queue: ``2**level`` ms."""
        return 1 << level

    def delay_next_exchange(self, level: int) -> str:
        """Where a level's queue dead-letters to."""
        if self._level(level) == 0:
            return self.delay_deliver_exchange
        return self.delay_exchange(level - 1)

    def delay_queue_arguments(self, level: int) -> dict[str, int | str]:
        """Arguments of a level's queue (must never change for an existing queue)."""
        return {
            "x-message-ttl": self.delay_ttl_ms(level),
            "x-dead-letter-exchange": self.delay_next_exchange(level),
        }

    def delay_queue_bindings(self, level: int) -> list[tuple[int, str]]:
        """``(target level, binding key)`` pairs binding level queues to a level's exchange.

        The bit for level ``n`` is word ``delay_levels - 1 - n`` of the routing key; the key
        goes to the queue of the highest set bit at or below ``level``.
        """
        skip = ["*"] * (self.delay_levels - 1 - self._level(level))
        return [
            (target, ".".join([*skip, *["0"] * (level - target), "1", "#"]))
            for target in range(level, -1, -1)
        ]

    def delay_deliver_binding(self, level: int) -> str:
        """Binding key from a level's exchange to the deliver exchange: bits ``level..0`` zero."""
        skip = ["*"] * (self.delay_levels - 1 - self._level(level))
        return ".".join([*skip, *["0"] * (level + 1), "#"])

    def split_delay(self, delay_ms: int) -> tuple[int, int]:
        """Split a delay into ``(this pass, remaining)``; remaining is re-delayed on arrival."""
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        first = min(delay_ms, self.max_delay_ms)
        return first, delay_ms - first

    def delay_routing_key(self, delay_ms: int, workflow: str) -> str:
        """Routing key that carries a message through the levels in exactly ``delay_ms``.

        Raises:
            ValueError: ``delay_ms`` is not in ``1..max_delay_ms`` or the workflow name is
                invalid.
        """
        if not 1 <= delay_ms <= self.max_delay_ms:
            raise ValueError(f"delay_ms must be in 1..{self.max_delay_ms}, got {delay_ms}")
        bits = format(delay_ms, f"0{self.delay_levels}b")
        return ".".join([*bits, validate_workflow_name(workflow)])

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
        """The routing key as published: delayed keys lose their delay bits."""
        if self.is_delay_exchange(exchange):
            return routing_key.split(".", self.delay_levels)[-1]
        return routing_key

    def _level(self, level: int) -> int:
        if not 0 <= level < self.delay_levels:
            raise ValueError(f"level must be in 0..{self.delay_levels - 1}, got {level}")
        return level
