"""Request guards: bearer-token auth, webhook signatures, and request body size limits.

Every comparison of a secret runs in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine._http._config import ApiSettings
from engine._http._errors import ApiError, error_response
from engine._http._signing import SIGNATURE_HEADER, signature_matches

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="Required on every /workflows route when WARREN_API_TOKEN is set.",
)


def api_settings(request: Request) -> ApiSettings:
    """The app's :class:`ApiSettings` (a FastAPI dependency)."""
    settings: ApiSettings = request.app.state.api_settings
    return settings


def check_token(settings: ApiSettings, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Raise 401 ``unauthorized`` unless the bearer token matches (when one is configured)."""
    if settings.token is None:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, settings.token.encode()):
        raise ApiError(
            401, "unauthorized", "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"}
        )


SettingsDep = Annotated[ApiSettings, Depends(api_settings)]
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


async def require_token(settings: SettingsDep, credentials: CredentialsDep) -> None:
    """FastAPI dependency of every route that needs the bearer token."""
    check_token(settings, credentials)


def check_signature(secret: str, header: str | None, body: bytes, *, target: str,
                    event_id: str | None) -> None:
    """Raise 401 ``signature_invalid`` unless ``header`` signs the event ``target``
    (``<workflow>/<instance_id>/<event_type>``) with ``secret`` (``engine._http._signing``)."""
    if not header:
        raise ApiError(401, "signature_invalid", f"missing {SIGNATURE_HEADER} header")
    if not signature_matches(secret, header, body, target=target, event_id=event_id):
        raise ApiError(
            401,
            "signature_invalid",
            f"{SIGNATURE_HEADER} does not match this event (expected t=<unix time>,v1=<hex "
            "HMAC-SHA256 of the time, the event and the body>, within 5 minutes, or "
            "sha256=<hex HMAC-SHA256 of the raw body>)",
        )


class BodyTooLargeError(ApiError):
    """Raised from ``receive`` when a streamed body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", f"request body is over {limit} bytes")


class BodyLimitMiddleware:
    """Refuses bodies over a per-path limit with 413, before reading them when possible.

    A declared ``Content-Length`` is checked up front; a chunked body is counted as it is
    received, so an oversized upload is cut off after ``limit`` bytes instead of buffered.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = error_response(
                413,
                "payload_too_large",
                f"request body is {declared} bytes, over the limit of {limit}",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, _counting(receive, limit), send)


class SameSiteMiddleware:
    """Refuses (403 ``forbidden``) a state-changing request a browser sent from another
    site: without a token (``warren dev``'s default), any web page could otherwise post a
    form that terminates an instance or sends it an event. Browsers say where a request
    comes from (``Sec-Fetch-Site``, ``Origin``); other clients (the CLI, curl, services,
    webhook relays) send neither and are not affected.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS \
                and _from_another_site(dict(scope.get("headers", ()))):
            response = error_response(403, "forbidden", "a request from another site is refused")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _from_another_site(headers: dict[bytes, bytes]) -> bool:
    """A browser's ``Sec-Fetch-Site`` says so (behind a proxy that rewrites ``Host`` too);
    a browser that sends none is judged by its ``Origin`` against ``Host``."""
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        return site == b"cross-site"
    origin = headers.get(b"origin")
    if origin is None:
        return False  # not a browser, or one that sends no Origin on this request
    parts = urlsplit(origin.decode("latin-1").lower())
    host = headers.get(b"host", b"").decode("latin-1").lower()
    default = {"http": ":80", "https": ":443"}.get(parts.scheme, "")
    return parts.netloc.removesuffix(default) != host.removesuffix(default)


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _counting(receive: Receive, limit: int) -> Callable[[], Awaitable[Message]]:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                # An HTTPException, so FastAPI's body parsing re-raises it as is (it turns
                # other exceptions into a generic 400).
                raise BodyTooLargeError(limit)
        return message

    return counted
