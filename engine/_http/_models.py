"""Request bodies and response shapes of the HTTP API, for validation and the OpenAPI schema.

Responses are rendered from the client's dictionaries directly (no re-validation on the
way out); the response models here document them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ID_DOC = "Instance id, `[A-Za-z0-9_-]{1,100}`; generated when omitted."


class CreateInstance(BaseModel):
    """Body of ``POST /workflows/{name}/instances`` and one item of a batch."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, description=ID_DOC)
    params: Any = Field(default=None, description="Any JSON value, at most 1 MiB.")


class TerminateRequest(BaseModel):
    """Optional body of ``POST .../terminate``."""

    model_config = ConfigDict(extra="forbid")
    rollback: bool = Field(
        default=False, description="Run the saga rollback handlers before terminating."
    )


class RestartRequest(BaseModel):
    """Optional body of ``POST .../restart``."""

    model_config = ConfigDict(extra="forbid")
    from_step: str | tuple[str, int] | None = Field(
        default=None,
        description='Keep the history before this step: a name, or `["name", count]`; '
        "null restarts from the beginning with the same params.",
    )


class ErrorInfo(BaseModel):
    """``{"name", "message"}`` of an exception."""

    name: str
    message: str


class Rollback(BaseModel):
    """Outcome of a saga rollback."""

    outcome: Literal["complete", "failed"]
    error: ErrorInfo | None = None


class Attempt(BaseModel):
    """One attempt of a ``do`` step."""

    start: str | None
    end: str | None
    success: bool | None
    error: ErrorInfo | None = None


class Step(BaseModel):
    """One step of an instance (API.md §6)."""

    model_config = ConfigDict(extra="allow")
    name: str
    type: Literal["do", "sleep", "sleep_until", "wait_for_event", "rollback"]
    start: str | None
    end: str | None
    success: bool | None
    attempts: list[Attempt] = []
    config: Any = None
    output: Any = None
    error: ErrorInfo | None = None


class InstanceStatus(BaseModel):
    """An instance's status: the JSON of ``sdk.InstanceStatus.to_dict()`` (API.md §6)."""

    model_config = ConfigDict(extra="allow")
    id: str
    workflow: str
    status: Literal[
        "queued",
        "running",
        "waiting",
        "paused",
        "waiting_for_pause",
        "complete",
        "errored",
        "terminated",
        "unknown",
    ]
    params: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    rollback: Rollback | None = None
    created: str | None = None
    started: str | None = None
    ended: str | None = None
    steps: list[Step] = []


class InstancePage(BaseModel):
    """One page of instances; pass ``next_cursor`` as ``cursor`` to get the next one."""

    items: list[InstanceStatus]
    next_cursor: str | None


class InstanceRef(BaseModel):
    """An instance created in a batch."""

    id: str
    workflow: str


class BatchCreated(BaseModel):
    """Result of a batch create, in request order."""

    items: list[InstanceRef]


class WorkflowInfo(BaseModel):
    """A workflow known to the engine."""

    name: str


class WorkflowList(BaseModel):
    """Every workflow some worker has served."""

    items: list[WorkflowInfo]


class Accepted(BaseModel):
    """A command or event was recorded; the instance acts on it in its next turn."""

    id: str
    workflow: str
    accepted: str = Field(description="What was accepted: `event:<type>`, `pause`, ...")


class ErrorDetail(BaseModel):
    """The stable ``code`` and a human-readable ``message``."""

    code: str
    message: str


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (400, "invalid request (`invalid`)"),
        (401, "`unauthorized` or `signature_invalid`"),
        (403, "`forbidden`: a state-changing request a browser sent from another site"),
        (404, "`not_found`"),
        (413, "`payload_too_large`"),
        (500, "`internal`: a bug, logged with its traceback"),
        (503, "`unavailable`: the broker or the database cannot be reached; retry later"),
    ]
}
