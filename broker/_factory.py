"""Choosing a :class:`Broker` implementation from a URL."""

from __future__ import annotations

from broker._base import Broker
from broker._topology import DEFAULT_NAMESPACE

_MEMORY_SCHEME = "memory://"


def broker_from_url(url: str | None, namespace: str = DEFAULT_NAMESPACE) -> Broker:
    """Build the broker a URL names (not yet connected).

    Args:
        url: ``None``, ``""``, ``"memory://"`` or ``"memory://<name>"`` for the in-process
            broker (shared process-wide per name, ``"default"`` when unnamed);
            ``amqp://...`` or ``amqps://...`` for RabbitMQ.
        namespace: Prefix of every exchange and queue name.

    Raises:
        ValueError: The URL's scheme is none of the above.
    """
    if not url or url.startswith(_MEMORY_SCHEME):
        from broker.memory import MemoryBroker

        name = (url or "")[len(_MEMORY_SCHEME) :].strip("/") or "default"
        return MemoryBroker.shared(name, namespace)
    if url.startswith(("amqp://", "amqps://")):
        from broker.rabbitmq import RabbitBroker

        return RabbitBroker(url, namespace)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise ValueError(
        f"unsupported broker URL scheme {scheme!r}: use 'memory://[name]', 'amqp://...' "
        "or 'amqps://...'"
    )
