"""The dashboard (API.md §2: ``warren dev`` serves it with the API): workflows, their
instances, one instance's steps, and its controls, at ``/dashboard``.

Pages are built here on the server from the same client the API uses: no script and no
assets to serve or trust, every value escaped where it is written. Controls are plain forms
that post and come back with a redirect (303). The page of an instance that has not finished
reloads itself every 2 s. It sits behind the API's bearer token, like every route.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from engine._codec import decode_message_json
from engine._http._errors import ApiError
from engine._http._routes_instances import ClientDep
from engine._http._security import require_token
from sdk._client import FINISHED, STATUSES
from sdk.errors import ValidationError

router = APIRouter(dependencies=[Depends(require_token)], include_in_schema=False)

_ACTIONS = ("pause", "resume", "terminate", "restart", "event")
_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
pre{margin:0;white-space:pre-wrap;max-width:60rem}
form{display:inline-block;margin:.25rem .5rem .25rem 0}
.complete{color:#17672f}.errored,.terminated{color:#a11}.running,.waiting{color:#1f4f9a}
"""


@router.get("/", response_class=HTMLResponse)
async def home() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard", response_class=HTMLResponse)
async def workflows(client: ClientDep) -> HTMLResponse:
    """Every served workflow with how many of its instances run, wait and queue."""
    rows = []
    for name in sorted(await client.workflows()):
        counts = await client.workflow(name).counts()
        rows.append([_link(f"/dashboard/{quote(name)}", name),
                     *(_text(counts.get(k)) for k in ("running", "waiting", "queued"))])
    body = _table(["workflow", "running", "waiting", "queued for a slot"], rows) if rows \
        else "<p>No workflow has been served yet: start a worker.</p>"
    return _page("Warren", body)


@router.get("/dashboard/{name}", response_class=HTMLResponse)
async def instances(
    name: str, client: ClientDep, status: str | None = None, cursor: str | None = None
) -> HTMLResponse:
    """A page of the workflow's instances, newest first, optionally of one status."""
    status = status or None
    page = await client.workflow(name).list(status=status, limit=50, cursor=cursor)
    filters = " · ".join(
        _link(f"/dashboard/{quote(name)}" + (f"?status={s}" if s else ""), s or "all")
        for s in ("", *sorted(STATUSES)))
    rows = [[_link(f"/dashboard/{quote(name)}/{quote(i.id)}", i.id), _status(i.status),
             _text(i.created), _text(i.ended)] for i in page.items]
    more = ""
    if page.next_cursor is not None:
        query = urlencode({k: v for k, v in (("status", status),
                                              ("cursor", page.next_cursor)) if v})
        more = f"<p>{_link(f'/dashboard/{quote(name)}?{query}', 'older →')}</p>"
    body = (f"<p>{_link('/dashboard', '← workflows')}</p><p>{filters}</p>"
            + _table(["instance", "status", "created", "ended"], rows) + more)
    return _page(f"{name}: instances", body)


@router.get("/dashboard/{name}/{instance_id}", response_class=HTMLResponse)
async def instance(name: str, instance_id: str, client: ClientDep) -> HTMLResponse:
    """One instance: its status, params, output or error, its steps, and its controls."""
    st = await (await client.workflow(name).get(instance_id)).status()
    here = f"/dashboard/{quote(name)}/{quote(instance_id)}"
    facts = [["status", _status(st.status)], ["params", _json(st.params)],
             ["output", _json(st.output)], ["error", _json(st.error)],
             ["rollback", _json(st.rollback)], ["created", _text(st.created)],
             ["started", _text(st.started)], ["ended", _text(st.ended)]]
    steps = [[_text(s.get("name")), _text(s.get("type")), _text(s.get("state")),
              _text(len(s.get("attempts") or [])), _text(s.get("start")), _text(s.get("end")),
              _json(s.get("output") if s.get("error") is None else s.get("error"))]
             for s in st.steps]
    controls = "".join(_form(f"{here}/{action}", action)
                       for action in ("pause", "resume", "terminate"))
    controls += _form(f"{here}/restart", "restart",
                      '<input name="from_step" placeholder="from step (optional)">')
    controls += _form(f"{here}/event", "send event",
                      '<input name="type" placeholder="event type" required> '
                      '<input name="payload" placeholder="JSON payload" value="{}">')
    body = (f"<p>{_link(f'/dashboard/{quote(name)}', f'← {name}')}</p>"
            + _table(["", ""], facts) + "<h2>Steps</h2>"
            + _table(["step", "type", "state", "attempts", "start", "end", "output / error"],
                     steps)
            + f"<h2>Controls</h2>{controls}")
    return _page(f"{name} / {instance_id}", body, refresh=st.status not in FINISHED)


@router.post("/dashboard/{name}/{instance_id}/{action}")
async def control(
    name: str, instance_id: str, action: str, request: Request, client: ClientDep
) -> RedirectResponse:
    """Apply a control form's action, then show the instance again."""
    if action not in _ACTIONS:
        raise ApiError(404, "not_found", f"no dashboard action {action!r}")
    try:
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
    except UnicodeDecodeError:
        raise ValidationError("the form is not UTF-8") from None
    inst = await client.workflow(name).get(instance_id)
    if action == "event":
        payload = decode_message_json((form.get("payload") or "null").encode(),
                                      what="the event payload")
        await inst.send_event(form.get("type", ""), payload)
    elif action == "restart":
        await inst.restart(from_step=form.get("from_step") or None)
    else:
        await getattr(inst, action)()
    return RedirectResponse(f"/dashboard/{quote(name)}/{quote(instance_id)}", status_code=303)


def _page(title: str, body: str, *, refresh: bool = False) -> HTMLResponse:
    meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
    return HTMLResponse(
        f'<!doctype html><html><head><meta charset="utf-8">{meta}'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _table(headers: list[str], rows: Iterable[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    cells = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{cells}</table>"


def _text(value: Any) -> str:
    return "" if value is None else html.escape(str(value))


def _json(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        value = dict(value)
    return f"<pre>{html.escape(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())}</pre>"


def _status(status: str) -> str:
    return f'<span class="{html.escape(status)}">{html.escape(status)}</span>'


def _link(href: str, label: str) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(label)}</a>'


def _form(action: str, label: str, fields: str = "") -> str:
    return (f'<form method="post" action="{html.escape(action)}">{fields}'
            f"<button>{html.escape(label)}</button></form>")
