"""Warren's SDK: write workflows, and create and follow their instances.

Workflow authoring: :class:`WorkflowEntrypoint`, :class:`WorkflowEvent`,
:class:`WorkflowStep`, :class:`StepContext`, :class:`RollbackContext`, :class:`ReceivedEvent`.
Client: :class:`Client`, :class:`Workflow`, :class:`Instance`, :class:`InstanceStatus`,
:class:`Subscription`.
Configuration helpers: :func:`parse_duration`, :class:`RetryPolicy`, :class:`StepConfig`.
Errors: see :mod:`sdk.errors`.
"""

from sdk._client import Client, Instance, InstanceStatus, Subscription, Workflow
from sdk._config import RetryPolicy, StepConfig
from sdk._durations import parse_duration
from sdk._step_function import StepFunction
from sdk._workflow import (
    ReceivedEvent,
    RollbackContext,
    StepContext,
    StepInfo,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
)
from sdk.errors import (
    EngineUnavailableError,
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidTransitionError,
    LimitExceededError,
    NonDeterminismError,
    NonRetryableError,
    StepFailedError,
    ValidationError,
    WarrenError,
    WorkflowTimeoutError,
)

__all__ = [
    # authoring
    "ReceivedEvent",
    "RollbackContext",
    "StepContext",
    "StepFunction",
    "StepInfo",
    "WorkflowEntrypoint",
    "WorkflowEvent",
    "WorkflowStep",
    # client
    "Client",
    "Instance",
    "InstanceStatus",
    "Subscription",
    "Workflow",
    # configuration
    "RetryPolicy",
    "StepConfig",
    "parse_duration",
    # errors
    "EngineUnavailableError",
    "InstanceExistsError",
    "InstanceNotFoundError",
    "InvalidTransitionError",
    "LimitExceededError",
    "NonDeterminismError",
    "NonRetryableError",
    "StepFailedError",
    "ValidationError",
    "WarrenError",
    "WorkflowTimeoutError",
]
