"""The FastAPI application of the HTTP API: a thin layer over one :class:`sdk.Client`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from engine._http import _dashboard, _routes_control, _routes_instances
from engine._http._config import ApiSettings
from engine._http._errors import JSONBody, install_error_handlers
from engine._http._security import BodyLimitMiddleware, SameSiteMiddleware
from sdk import Client

DESCRIPTION = """\
Create, follow and control Warren workflow instances over HTTP (JSON).

* **Auth**: when `WARREN_API_TOKEN` is set, send `Authorization: Bearer <token>`.
* **Webhooks**: when `WARREN_WEBHOOK_SECRET` is set, the events route instead requires
  `X-Warren-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.
* **Errors**: `{"error": {"code": "...", "message": "..."}}` with a stable `code`
  (`invalid`, `unauthorized`, `signature_invalid`, `not_found`, `already_exists`,
  `invalid_transition`, `payload_too_large`, `unavailable`, `internal`).
* **Pagination**: list routes answer `next_cursor`; pass it back as `cursor`.
"""


def create_app(client: Client, settings: ApiSettings | None = None) -> FastAPI:
    """Build the HTTP API.

    Args:
        client: The client every route works through; the caller connects and closes it.
        settings: Auth and limits (default: from ``WARREN_API_*`` environment variables).

    Returns:
        An ASGI application (serve it with uvicorn).
    """
    settings = settings or ApiSettings.from_env()
    app = FastAPI(
        title="Warren", version=_version(), description=DESCRIPTION, default_response_class=JSONBody
    )
    app.state.client = client
    app.state.api_settings = settings
    install_error_handlers(app)

    def limit_for(path: str) -> int:
        if path.endswith("/instances/batch"):
            return settings.max_batch_body_bytes
        return settings.max_body_bytes

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    app.add_middleware(SameSiteMiddleware)
    app.include_router(_routes_instances.router)
    app.include_router(_routes_control.router)
    app.include_router(_dashboard.router)

    @app.get("/healthz", tags=["meta"], summary="Liveness")
    async def healthz() -> dict[str, bool]:
        """Answers ``{"ok": true}`` while the server runs (no auth; for probes)."""
        return {"ok": True}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _without_422(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _without_422(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop FastAPI's default 422 responses: validation errors here are 400 ``invalid``."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return schema


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("warren")
    except PackageNotFoundError:
        return "0.0.0"
