"""The synchronous client of the HTTP API that the ``warren`` CLI uses (stdlib only).

It speaks the same JSON as any other caller: a failed call raises :class:`ApiCallError`
carrying the server's stable error ``code``, so the CLI can print one clear line.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from engine._http._signing import EVENT_ID_HEADER, SIGNATURE_HEADER, sign_event

DEFAULT_API_URL = "http://127.0.0.1:8787"
_NO_BODY = object()


class ApiCallError(Exception):
    """A call failed: the server answered an error, or could not be reached.

    Attributes:
        code: The server's error code (``not_found``, ...), or ``unreachable``.
        status: The HTTP status, or ``None`` when the server could not be reached.
    """

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ApiClient:
    """Calls the HTTP API at ``base_url``.

    Args:
        base_url: Where the API listens (default ``WARREN_API_URL`` or ``http://127.0.0.1:8787``).
        token: Bearer token (default ``WARREN_API_TOKEN``).
        webhook_secret: Signs events when set (default ``WARREN_WEBHOOK_SECRET``).
        timeout: Seconds per request.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        webhook_secret: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url or os.environ.get("WARREN_API_URL") or DEFAULT_API_URL
        self.base_url = self.base_url.rstrip("/")
        self.token = token or os.environ.get("WARREN_API_TOKEN") or None
        self.webhook_secret = webhook_secret or os.environ.get("WARREN_WEBHOOK_SECRET") or None
        self.timeout = timeout

    # -- the endpoints ------------------------------------------------------------------------

    def workflows(self) -> list[str]:
        """Names of the workflows the engine knows."""
        return [w["name"] for w in self.call("GET", "/workflows")["items"]]

    def create(self, workflow: str, params: Any, instance_id: str | None = None) -> Any:
        """Create an instance; returns its status JSON."""
        body: dict[str, Any] = {"params": params}
        if instance_id is not None:
            body["id"] = instance_id
        return self.call("POST", f"{_wf(workflow)}/instances", body)

    def list_instances(
        self,
        workflow: str,
        *,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Any:
        """One page: ``{"items": [...], "next_cursor": ...}``."""
        query = {
            k: v
            for k, v in {"status": status, "limit": limit, "cursor": cursor}.items()
            if v is not None
        }
        return self.call("GET", f"{_wf(workflow)}/instances", query=query)

    def describe(self, workflow: str, instance_id: str) -> Any:
        """The instance's status JSON."""
        return self.call("GET", _inst(workflow, instance_id))

    def latest_id(self, workflow: str) -> str:
        """Id of the workflow's most recently created instance."""
        items = self.list_instances(workflow, limit=1)["items"]
        if not items:
            raise ApiCallError("not_found", f"workflow {workflow!r} has no instances yet")
        return str(items[0]["id"])

    def send_event(self, workflow: str, instance_id: str, event_type: str, payload: Any) -> Any:
        """Deliver an event, once however often the request is sent (its own event id);
        signed when a webhook secret is configured."""
        raw = orjson.dumps(payload)
        event_id = uuid.uuid4().hex
        headers = {EVENT_ID_HEADER: event_id}
        if self.webhook_secret:
            headers[SIGNATURE_HEADER] = sign_event(
                self.webhook_secret, f"{workflow}/{instance_id}/{event_type}", event_id, raw)
        return self.call(
            "POST",
            f"{_inst(workflow, instance_id)}/events/{quote(event_type, '')}",
            raw=raw,
            headers=headers,
        )

    def control(
        self, workflow: str, instance_id: str, action: str, body: dict[str, Any] | None = None
    ) -> Any:
        """``pause``, ``resume``, ``terminate`` or ``restart``."""
        return self.call(
            "POST",
            f"{_inst(workflow, instance_id)}/{action}",
            body if body is not None else _NO_BODY,
        )

    # -- transport ----------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Any = _NO_BODY,
        *,
        query: dict[str, Any] | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One request; returns the decoded JSON answer.

        Raises:
            ApiCallError: with the server's error code, or ``unreachable``.
        """
        url = self.base_url + path + (f"?{urlencode(query)}" if query else "")
        data = raw if raw is not None else (None if body is _NO_BODY else orjson.dumps(body))
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return _decode(response.read())
        except urllib.error.HTTPError as exc:
            raise _error_from(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiCallError(
                "unreachable",
                f"cannot reach the Warren API at {self.base_url} ({reason}); start it with "
                "`warren dev MODULE` or set WARREN_API_URL",
            ) from None


def _wf(workflow: str) -> str:
    return f"/workflows/{quote(workflow, safe='')}"


def _inst(workflow: str, instance_id: str) -> str:
    return f"{_wf(workflow)}/instances/{quote(instance_id, safe='')}"


def _decode(data: bytes) -> Any:
    return orjson.loads(data) if data else None


def _error_from(exc: urllib.error.HTTPError) -> ApiCallError:
    try:
        detail = orjson.loads(exc.read())["error"]
        return ApiCallError(str(detail["code"]), str(detail["message"]), exc.code)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ApiCallError(f"http_{exc.code}", f"HTTP {exc.code} {exc.reason}", exc.code)
