"""Every error Warren raises, under one root.

::

    WarrenError
    ├── NonRetryableError            raise in a step to fail it without further attempts
    ├── StepFailedError              a step exhausted its attempts (raised into run())
    ├── WorkflowTimeoutError         a wait_for_event timed out (raised into run())
    ├── NonDeterminismError          run() diverged from the recorded history
    ├── InstanceNotFoundError        (also LookupError)
    ├── InstanceExistsError          an instance with that id exists already
    ├── InvalidTransitionError       a control command not valid in the current status
    ├── ValidationError              bad input: names, ids, durations, sizes (also ValueError)
    │   └── LimitExceededError       a documented limit was exceeded
    └── EngineUnavailableError       broker or database unreachable after retries

Errors raised by step bodies are recorded as ``{"name", "message"}`` and survive
serialization into history; :meth:`WarrenError.to_dict` gives that shape.
"""

from __future__ import annotations

from typing import Any


class WarrenError(Exception):
    """Root of every Warren error."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "message": str(self)}


class NonRetryableError(WarrenError):
    """Raised inside a step to fail it at once, whatever its retry configuration."""


class StepFailedError(WarrenError):
    """A step failed after its last attempt.

    Attributes:
        step_name: The step's name.
        error_name: Type name of the last attempt's error.
        error_message: Message of the last attempt's error.
        attempts: How many attempts were made.
    """

    def __init__(self, step_name: str, error_name: str, error_message: str, attempts: int):
        super().__init__(
            f"step {step_name!r} failed after {attempts} attempt(s): {error_name}: {error_message}"
        )
        self.step_name = step_name
        self.error_name = error_name
        self.error_message = error_message
        self.attempts = attempts

    def to_dict(self) -> dict[str, Any]:
        # The instance's error is the step's error, as on Cloudflare: name and message of the
        # last attempt's exception, not of this wrapper.
        return {"name": self.error_name, "message": self.error_message}


class WorkflowTimeoutError(WarrenError):
    """A ``wait_for_event`` reached its timeout before a matching event arrived."""


class NonDeterminismError(WarrenError):
    """``run()`` did something different from what its recorded history says it did."""


class InstanceNotFoundError(WarrenError, LookupError):
    """No instance with that id exists for that workflow."""


class InstanceExistsError(WarrenError):
    """An instance with that id already exists; ids are unique per workflow."""


class InvalidTransitionError(WarrenError):
    """A control command (pause, resume, …) that the instance's status does not allow."""


class ValidationError(WarrenError, ValueError):
    """Input that Warren cannot accept: a bad name, id, duration, config or value."""


class LimitExceededError(ValidationError):
    """A documented limit (sizes, counts, durations) was exceeded."""


class EngineUnavailableError(WarrenError):
    """The broker or the database could not be reached after retrying."""
