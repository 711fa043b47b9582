"""Routes that create, list and describe instances, and list workflows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from engine._http._errors import JSONBody
from engine._http._models import (
    ERROR_RESPONSES,
    BatchCreated,
    CreateInstance,
    ErrorResponse,
    InstancePage,
    InstanceStatus,
    WorkflowList,
)
from engine._http._security import require_token
from sdk import Client

router = APIRouter(dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


def get_client(request: Request) -> Client:
    """The app's :class:`sdk.Client` (a FastAPI dependency)."""
    client: Client = request.app.state.client
    return client


ClientDep = Annotated[Client, Depends(get_client)]


def as_dict(item: Any) -> dict[str, Any]:
    """An ``InstanceStatus`` (or a mapping) as its JSON dictionary."""
    if hasattr(item, "to_dict"):
        data: dict[str, Any] = item.to_dict()
        return data
    if isinstance(item, Mapping):
        return dict(item)
    raise TypeError(f"cannot serialize {type(item).__name__} as an instance status")


@router.get("/workflows", response_model=WorkflowList, tags=["workflows"], summary="List workflows")
async def list_workflows(client: ClientDep) -> JSONBody:
    """Every workflow that some worker has served, by name."""
    names = await client.workflows()
    return JSONBody({"items": [{"name": n} for n in sorted(names)]})


@router.post(
    "/workflows/{name}/instances",
    status_code=201,
    tags=["instances"],
    responses={
        201: {"model": InstanceStatus, "description": "created"},
        409: {"model": ErrorResponse, "description": "`already_exists`"},
    },
    summary="Create an instance",
)
async def create_instance(
    name: str, client: ClientDep, body: CreateInstance | None = None
) -> JSONBody:
    """Create an instance (stored, then started by a worker) and return its status."""
    body = body or CreateInstance()
    instance = await client.workflow(name).create(params=body.params, id=body.id)
    status = await instance.status()
    return JSONBody(
        as_dict(status),
        status_code=201,
        headers={"Location": f"/workflows/{name}/instances/{instance.id}"},
    )


@router.post(
    "/workflows/{name}/instances/batch",
    status_code=201,
    tags=["instances"],
    responses={
        201: {"model": BatchCreated, "description": "created"},
        409: {"model": ErrorResponse, "description": "`already_exists`: none was created"},
    },
    summary="Create up to 100 instances",
)
async def create_batch(name: str, body: list[CreateInstance], client: ClientDep) -> JSONBody:
    """Create up to 100 instances, all or none; answers their ids in request order."""
    items = [item.model_dump(exclude_unset=True) for item in body]
    created = await client.workflow(name).create_batch(items)
    return JSONBody(
        {"items": [{"id": i.id, "workflow": i.workflow} for i in created]}, status_code=201
    )


@router.get(
    "/workflows/{name}/instances",
    response_model=InstancePage,
    tags=["instances"],
    summary="List instances",
)
async def list_instances(
    name: str,
    client: ClientDep,
    status: Annotated[str | None, Query(description="Only instances in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of a previous page.")] = None,
) -> JSONBody:
    """A page of the workflow's instances, newest first."""
    page = await client.workflow(name).list(status=status, limit=limit, cursor=cursor)
    return JSONBody({"items": [as_dict(i) for i in page.items], "next_cursor": page.next_cursor})


@router.get(
    "/workflows/{name}/instances/{instance_id}",
    response_model=InstanceStatus,
    tags=["instances"],
    summary="Describe an instance",
)
async def describe_instance(name: str, instance_id: str, client: ClientDep) -> JSONBody:
    """The instance's full status: params, output, error and every step with its attempts."""
    instance = await client.workflow(name).get(instance_id)
    return JSONBody(as_dict(await instance.status()))
