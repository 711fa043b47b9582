"""The public surface is a promise: these lists change only on purpose."""

from __future__ import annotations

import broker
import engine
import sdk


def test_sdk_exports() -> None:
    assert sorted(sdk.__all__) == sorted([
        "ReceivedEvent", "RollbackContext", "StepContext", "StepFunction", "StepInfo",
        "WorkflowEntrypoint", "WorkflowEvent", "WorkflowStep",
        "Client", "Instance", "InstanceStatus", "Subscription", "Workflow",
        "RetryPolicy", "StepConfig", "parse_duration",
        "EngineUnavailableError", "InstanceExistsError", "InstanceNotFoundError",
        "InvalidTransitionError", "LimitExceededError", "NonDeterminismError",
        "NonRetryableError", "StepFailedError", "ValidationError", "WarrenError",
        "WorkflowTimeoutError",
    ])
    assert all(hasattr(sdk, name) for name in sdk.__all__)


def test_engine_exports() -> None:
    assert sorted(engine.__all__) == ["Settings", "Worker"]
    assert all(getattr(engine, name) for name in engine.__all__)


def test_broker_exports() -> None:
    assert sorted(broker.__all__) == sorted([
        "ORIGIN_EXCHANGE_HEADER", "ORIGIN_ROUTING_KEY_HEADER", "REASON_HEADER", "STORED_HEADER",
        "Broker",
        "Consumer", "Delivery", "DeliveryHandler", "Envelope", "EnvelopeError", "Exchange",
        "OutgoingMessage", "PublishError", "Subscription", "broker_from_url", "turn_message",
    ])
    assert all(hasattr(broker, name) for name in broker.__all__)


def test_usage_errors_are_value_errors_and_share_one_root() -> None:
    assert issubclass(sdk.ValidationError, ValueError)
    assert issubclass(sdk.LimitExceededError, sdk.ValidationError)
    assert issubclass(sdk.InstanceNotFoundError, LookupError)
    for name in sdk.__all__:
        obj = getattr(sdk, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, sdk.WarrenError)
