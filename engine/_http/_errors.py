"""JSON errors of the HTTP API: ``{"error": {"code": ..., "message": ...}}`` with stable codes.

Codes (and their HTTP statuses) are a contract; messages are for people and may change:

==================== ====== ====================================================
code                 status when
==================== ====== ====================================================
``invalid``          400    malformed JSON, bad name/id/params, failed validation
``unauthorized``     401    missing or wrong bearer token
``signature_invalid`` 401   missing or wrong ``X-Warren-Signature`` on an event
``forbidden``        403    a state-changing request a browser sent from another site
``not_found``        404    unknown instance, or no such route
``method_not_allowed`` 405  the route exists, the method does not
``already_exists``   409    an instance with that id exists
``invalid_transition`` 409  pause/resume/... not allowed in the instance's status
``payload_too_large`` 413   body over the size limit, or a documented limit exceeded
``unavailable``      503    broker or database unreachable
``internal``         500    a bug: logged with its traceback
==================== ====== ====================================================
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker import PublishError
from sdk.errors import (
    EngineUnavailableError,
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidTransitionError,
    LimitExceededError,
    ValidationError,
    WarrenError,
)

log = structlog.get_logger("warren.http")

_CODE_BY_STATUS = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "already_exists",
    413: "payload_too_large",
    503: "unavailable",
}

# Most specific first: LimitExceededError is a ValidationError.
_WARREN_ERRORS: list[tuple[type[WarrenError], int, str]] = [
    (InstanceNotFoundError, 404, "not_found"),
    (InstanceExistsError, 409, "already_exists"),
    (InvalidTransitionError, 409, "invalid_transition"),
    (LimitExceededError, 413, "payload_too_large"),
    (ValidationError, 400, "invalid"),
    (EngineUnavailableError, 503, "unavailable"),
]


class JSONBody(Response):
    """A JSON response rendered with orjson (params and outputs can be large)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(HTTPException):
    """An HTTP error with a stable machine-readable ``code``."""

    def __init__(
        self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code, message, headers)
        self.code = code


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONBody:
    return JSONBody(error_body(code, message), status_code=status, headers=headers)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = getattr(exc, "code", None) or _CODE_BY_STATUS.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(400, "invalid", "; ".join(problems) or "invalid request")


async def _warren_error(_request: Request, exc: Exception) -> Response:
    for kind, status, code in _WARREN_ERRORS:
        if isinstance(exc, kind):
            return error_response(status, code, str(exc))
    log.error("unmapped warren error", error=repr(exc))
    return error_response(500, "internal", f"{type(exc).__name__}: {exc}")


class CatchAllMiddleware:
    """Answers an unexpected exception with a 500 ``internal`` JSON error and logs it once.

    Starlette's own last-resort handler re-raises after answering, so the server would log
    the traceback a second time; this middleware sits inside it and keeps the exception.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("request failed", method=scope.get("method"), path=scope.get("path"))
            if started:
                raise  # too late for an error body; let the server close the connection
            response = (error_response(503, "unavailable", f"the broker or the database cannot "
                                       f"be reached; retry later ({type(exc).__name__})")
                        if _unreachable(exc) else
                        error_response(500, "internal", "internal error (see the server log)"))
            await response(scope, receive, send)


# SQLSTATE classes of a database that cannot serve now: connection exception, insufficient
# resources (e.g. too many connections), operator intervention (shutting down, starting up).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57")


# Network failures are OSErrors (ECONNREFUSED, EHOSTUNREACH, "Multiple exceptions: ..."
# from a host with several addresses); these OSErrors are about files, not networks.
_LOCAL_FAILURES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_UNREACHABLE = (PublishError, OSError)
# What SQLite says when its file is busy or cannot be opened (it has no SQLSTATE).
_UNAVAILABLE_SQLITE = ("database is locked", "unable to open database", "disk i/o error")


def _network_failure(exc: BaseException | None) -> bool:
    return isinstance(exc, _UNREACHABLE) and not isinstance(exc, _LOCAL_FAILURES)


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker or the database is out of reach (503), not a bug:
    a SQL error or a missing file is a 500, however the driver classes it."""
    if _network_failure(exc):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or _network_failure(exc.orig):
            return True
        state = getattr(exc.orig, "sqlstate", None)
        if isinstance(state, str):
            return state[:2] in _UNAVAILABLE_SQLSTATES
        return isinstance(exc, OperationalError) and any(
            text in str(exc.orig).lower() for text in _UNAVAILABLE_SQLITE)
    return False


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, ours or the framework's, answer in the JSON error shape.

    Call it before adding other middleware, so that the catch-all is the innermost layer.
    """
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(WarrenError, _warren_error)
    app.add_middleware(CatchAllMiddleware)
