"""Routes that act on an instance: deliver an event (webhooks), pause, resume, terminate, restart.

The events route takes the raw body as the event payload, so a webhook can be pointed at it
directly. With ``WARREN_WEBHOOK_SECRET`` set it is authenticated by its signature (webhook
senders cannot add a bearer token); otherwise by the bearer token like every other route.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from engine._codec import decode_message_json
from engine._http._errors import ApiError, JSONBody
from engine._http._models import (
    ERROR_RESPONSES,
    Accepted,
    ErrorResponse,
    RestartRequest,
    TerminateRequest,
)
from engine._http._routes_instances import ClientDep
from engine._http._security import (
    CredentialsDep,
    SettingsDep,
    check_signature,
    check_token,
    require_token,
)
from engine._http._signing import EVENT_ID_HEADER, SIGNATURE_HEADER
from sdk import Instance
from sdk.errors import ValidationError

router = APIRouter(
    tags=["control"],
    responses={
        **ERROR_RESPONSES,
        409: {"model": ErrorResponse, "description": "`invalid_transition`"},
    },
)


_ANY_JSON: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": "The event payload: any JSON value (at most 1 MiB). Empty means null. "
        f"With a webhook secret configured, sign it (`{SIGNATURE_HEADER}`).",
        "content": {"application/json": {"schema": {}}},
    },
    "parameters": [
        {
            "name": SIGNATURE_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string",
                       "pattern": "^(t=[0-9]+,v1=[0-9a-f]{64}|sha256=[0-9a-f]{64})$"},
            "description": "Required when the server has WARREN_WEBHOOK_SECRET, keyed with "
            "it: `t=<unix seconds>,v1=` + hex HMAC-SHA256 of `<t>\\n<workflow>/<instance_id>/"
            "<event_type>\\n<event id or empty>\\n` followed by the raw body (valid for 5 "
            "minutes, for this event only), or `sha256=` + hex HMAC-SHA256 of the raw body "
            "alone (GitHub's form, for relays that sign only the body: it can be replayed).",
        },
        {
            "name": EVENT_ID_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 200},
            "description": "De-duplicates: events with the same id are delivered once.",
        },
    ],
}


def _accepted(instance: Instance, what: str) -> JSONBody:
    return JSONBody(
        {"id": instance.id, "workflow": instance.workflow, "accepted": what}, status_code=202
    )


@router.post(
    "/workflows/{name}/instances/{instance_id}/events/{event_type}",
    status_code=202,
    response_model=Accepted,
    openapi_extra=_ANY_JSON,
    summary="Send an event",
)
async def send_event(
    name: str,
    instance_id: str,
    event_type: str,
    request: Request,
    settings: SettingsDep,
    credentials: CredentialsDep,
    client: ClientDep,
) -> JSONBody:
    """Deliver an event to the instance; ``step.wait_for_event`` of that type receives it.

    An optional ``X-Warren-Event-Id`` header de-duplicates: a webhook retried with the same
    id is delivered once.
    """
    body = await request.body()
    event_id = request.headers.get(EVENT_ID_HEADER) or None
    if settings.webhook_secret is not None:
        check_signature(settings.webhook_secret, request.headers.get(SIGNATURE_HEADER), body,
                        target=f"{name}/{instance_id}/{event_type}", event_id=event_id)
    else:
        check_token(settings, credentials)
    try:
        payload = decode_message_json(body, what="the event payload") if body.strip() else None
    except ValidationError as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    if event_id is not None and not (0 < len(event_id) <= 200 and event_id.isascii()
                                     and event_id.isprintable()):
        raise ApiError(400, "invalid",
                       f"{EVENT_ID_HEADER} must be 1-200 printable ASCII characters")
    instance = await client.workflow(name).get(instance_id)
    await instance.send_event(event_type, payload, message_id=event_id)
    return _accepted(instance, f"event:{event_type}")


@router.post(
    "/workflows/{name}/instances/{instance_id}/pause",
    status_code=202,
    response_model=Accepted,
    dependencies=[Depends(require_token)],
    summary="Pause an instance",
)
async def pause(name: str, instance_id: str, client: ClientDep) -> JSONBody:
    """Pause at the next step boundary (``waiting_for_pause`` while steps are in flight)."""
    instance = await client.workflow(name).get(instance_id)
    await instance.pause()
    return _accepted(instance, "pause")


@router.post(
    "/workflows/{name}/instances/{instance_id}/resume",
    status_code=202,
    response_model=Accepted,
    dependencies=[Depends(require_token)],
    summary="Resume an instance",
)
async def resume(name: str, instance_id: str, client: ClientDep) -> JSONBody:
    """Resume a paused instance."""
    instance = await client.workflow(name).get(instance_id)
    await instance.resume()
    return _accepted(instance, "resume")


@router.post(
    "/workflows/{name}/instances/{instance_id}/terminate",
    status_code=202,
    response_model=Accepted,
    dependencies=[Depends(require_token)],
    summary="Terminate an instance",
)
async def terminate(
    name: str,
    instance_id: str,
    client: ClientDep,
    body: TerminateRequest | None = None,
) -> JSONBody:
    """Terminate (in-flight step results are discarded); optionally roll back first."""
    instance = await client.workflow(name).get(instance_id)
    await instance.terminate(rollback=(body or TerminateRequest()).rollback)
    return _accepted(instance, "terminate")


@router.post(
    "/workflows/{name}/instances/{instance_id}/restart",
    status_code=202,
    response_model=Accepted,
    dependencies=[Depends(require_token)],
    summary="Restart an instance",
)
async def restart(
    name: str,
    instance_id: str,
    client: ClientDep,
    body: RestartRequest | None = None,
) -> JSONBody:
    """Restart with the same params, from the beginning or from ``from_step``."""
    instance = await client.workflow(name).get(instance_id)
    await instance.restart(from_step=(body or RestartRequest()).from_step)
    return _accepted(instance, "restart")
