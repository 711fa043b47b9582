"""What a workflow author writes against: the entrypoint, its event, and the step API."""

from __future__ import annotations

import abc
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, overload

from sdk._config import (
    StepConfig,
    check_step_name,
    check_workflow_name,
    rollback_step_config,
    step_config,
)
from sdk._durations import Duration
from sdk._step_function import StepFunction
from sdk.errors import ValidationError

StepBody = Callable[..., Any]
RollbackHandler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """What started an instance.

    Attributes:
        payload: The instance's params (any JSON value).
        instance_id: The instance's id.
        workflow: The workflow's name.
        timestamp: When the instance was created (UTC).
    """

    payload: Any
    instance_id: str
    workflow: str
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event consumed by ``step.wait_for_event``."""

    type: str
    payload: Any
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class StepInfo:
    """Identity of a step: its name and which occurrence of that name in the run."""

    name: str
    count: int

    @property
    def key(self) -> str:
        return f"{self.name}#{self.count}"


@dataclass(frozen=True, slots=True)
class StepContext:
    """Passed to a step function that takes a parameter named ``ctx``."""

    step: StepInfo
    attempt: int
    config: StepConfig


@dataclass(frozen=True, slots=True)
class RollbackContext:
    """Passed to a rollback handler.

    Attributes:
        error: ``{"name", "message"}`` of the error that started the rollback.
        step: The compensated step.
        attempts: How many attempts the compensated step made.
        output: The step's persisted output, or ``None`` if it has none.
    """

    error: Mapping[str, Any]
    step: StepInfo
    attempts: int
    output: Any


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


class WorkflowEntrypoint(abc.ABC):
    """Base class of every workflow: subclass it and implement :meth:`run`.

    Class attributes:
        name: The workflow's name (default: the class name in kebab-case).
        max_concurrency: At most this many instances running at once (``None``: no limit
            beyond the global one).
        max_creation_rate: Instances admitted per second (``None``: unlimited).
    """

    name: ClassVar[str]
    max_concurrency: ClassVar[int | None] = None
    max_creation_rate: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = _kebab(cls.__name__)
        check_workflow_name(cls.name)

    @abc.abstractmethod
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        """The workflow: deterministic code outside steps, side effects inside them."""


class WorkflowStep(abc.ABC):
    """The step API handed to :meth:`WorkflowEntrypoint.run`; the engine implements it."""

    @overload
    def do(
        self,
        name: str,
        fn: StepBody,
        /,
        *,
        retries: Mapping[str, Any] | None = None,
        timeout: Duration | None = None,
        rollback: RollbackHandler | None = None,
        rollback_config: Mapping[str, Any] | None = None,
    ) -> Awaitable[Any]: ...

    @overload
    def do(
        self,
        name: str,
        /,
        *,
        retries: Mapping[str, Any] | None = None,
        timeout: Duration | None = None,
        rollback: RollbackHandler | None = None,
        rollback_config: Mapping[str, Any] | None = None,
        depends: Sequence[StepFunction] | None = None,
        concurrent: bool = False,
    ) -> Callable[[StepBody], StepFunction]: ...

    def do(
        self,
        name: str,
        fn: StepBody | None = None,
        /,
        *,
        retries: Mapping[str, Any] | None = None,
        timeout: Duration | None = None,
        rollback: RollbackHandler | None = None,
        rollback_config: Mapping[str, Any] | None = None,
        depends: Sequence[StepFunction] | None = None,
        concurrent: bool = False,
    ) -> Awaitable[Any] | Callable[[StepBody], StepFunction]:
        """Run ``fn`` as a durable step, or decorate a function to make it one.

        Call form: ``await step.do("name", fn, **config)``; ``fn`` takes no arguments or one
        named ``ctx``. Decorator form: ``@step.do("name", **config)`` over a function; calling
        the decorated function runs the step, passing results of its dependencies.

        Raises:
            ValidationError: for a bad name or config, at the call site.
        """
        check_step_name(name)
        config = step_config(retries, timeout)
        rb_config = rollback_step_config(rollback_config)
        if rollback is not None and not callable(rollback):
            raise ValidationError("rollback must be a callable")
        if fn is None:

            def decorator(body: StepBody) -> StepFunction:
                return StepFunction(
                    self, name, body, config, rollback, rb_config, list(depends or ()), concurrent
                )

            return decorator
        if depends is not None or concurrent:
            raise ValidationError("depends= and concurrent= belong to the decorator form")
        if not callable(fn):
            raise ValidationError(f"step {name!r}: fn must be callable, got {type(fn).__name__}")
        return self._start_step(name, fn, config, rollback, rb_config)

    @abc.abstractmethod
    def _start_step(
        self,
        name: str,
        fn: StepBody,
        config: StepConfig,
        rollback: RollbackHandler | None,
        rollback_config: StepConfig,
    ) -> Awaitable[Any]:
        """Engine hook: register a step call and return what resolves to its result."""

    @abc.abstractmethod
    def sleep(self, name: str, duration: Duration) -> Awaitable[None]:
        """Durably wait ``duration`` (≤ 365 days); no worker resources are held meanwhile."""

    @abc.abstractmethod
    def sleep_until(self, name: str, when: datetime | float) -> Awaitable[None]:
        """Durably wait until ``when`` (an aware datetime or a UNIX timestamp)."""

    @abc.abstractmethod
    def wait_for_event(
        self, name: str, event_type: str, *, timeout: Duration = timedelta(hours=24)
    ) -> Awaitable[ReceivedEvent]:
        """Wait for the oldest unconsumed event of ``event_type`` sent to this instance."""

    @abc.abstractmethod
    def report_progress(self, data: Any) -> None:
        """Publish a non-durable progress lifecycle event (only where the worker publishes
        every kind: ``WARREN_LIFECYCLE_EVENTS=all``, the default)."""
