"""Messaging for Warren: the :class:`Broker` interface and its RabbitMQ and in-process forms."""

from broker._base import (
    ORIGIN_EXCHANGE_HEADER,
    ORIGIN_ROUTING_KEY_HEADER,
    REASON_HEADER,
    STORED_HEADER,
    Broker,
    Consumer,
    Delivery,
    DeliveryHandler,
    Exchange,
    OutgoingMessage,
    PublishError,
    Subscription,
)
from broker._envelope import Envelope, EnvelopeError, turn_message
from broker._factory import broker_from_url

__all__ = [
    "ORIGIN_EXCHANGE_HEADER",
    "ORIGIN_ROUTING_KEY_HEADER",
    "REASON_HEADER",
    "STORED_HEADER",
    "Broker",
    "Consumer",
    "Delivery",
    "DeliveryHandler",
    "Envelope",
    "EnvelopeError",
    "Exchange",
    "OutgoingMessage",
    "PublishError",
    "Subscription",
    "broker_from_url",
    "turn_message",
]
