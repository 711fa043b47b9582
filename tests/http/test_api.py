"""The HTTP API end to end: real requests over TCP against a running uvicorn server."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from engine._gc import YOUNG_GENERATION_THRESHOLD
from engine._http._config import MIB, ApiSettings
from engine._http._remote import ApiCallError, ApiClient
from engine._http._signing import SIGNATURE_HEADER, sign, sign_event
from sdk import Client
from tests.helpers import eventually
from tests.http.conftest import RunningApi, StartApi

INSTANCES = "/workflows/greet/instances"


async def _status(api: RunningApi, workflow: str, instance_id: str) -> dict[str, Any]:
    response = await api.http.get(f"/workflows/{workflow}/instances/{instance_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _wait_status(
    api: RunningApi, workflow: str, instance_id: str, *wanted: str, timeout_s: float = 15
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        status = await _status(api, workflow, instance_id)
        return status if status["status"] in wanted else None

    result: dict[str, Any] = await eventually(
        reached, timeout=timeout_s, interval=0.05, message=f"{instance_id} reaches {wanted}"
    )
    return result


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


# -- create, describe, list ---------------------------------------------------------------------


async def test_create_then_describe_until_complete(api: RunningApi) -> None:
    response = await api.http.post(INSTANCES, json={"id": "g-1", "params": {"name": "ana"}})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["id"] == "g-1" and created["workflow"] == "greet"
    assert created["params"] == {"name": "ana"}
    assert created["status"] in ("queued", "running", "complete")
    assert response.headers["location"] == "/workflows/greet/instances/g-1"

    done = await _wait_status(api, "greet", "g-1", "complete")
    assert done["output"]["greeting"] == "hello ana"
    assert set(done) >= {
        "id",
        "workflow",
        "status",
        "params",
        "output",
        "error",
        "rollback",
        "created",
        "started",
        "ended",
        "steps",
    }
    (step,) = done["steps"]
    assert step["name"] == "greet" and step["type"] == "do" and step["success"] is True
    assert len(step["attempts"]) == 1 and done["error"] is None


async def test_create_without_body_generates_an_id(api: RunningApi) -> None:
    response = await api.http.post(INSTANCES)
    assert response.status_code == 201, response.text
    instance_id = response.json()["id"]
    assert instance_id and response.json()["params"] is None
    await _wait_status(api, "greet", instance_id, "complete")


async def test_batch_create_is_all_or_none(api: RunningApi) -> None:
    body = [{"id": "b-1", "params": {"name": "x"}}, {"params": {"name": "y"}}, {"id": "b-3"}]
    response = await api.http.post(f"{INSTANCES}/batch", json=body)
    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert [i["workflow"] for i in items] == ["greet"] * 3
    assert items[0]["id"] == "b-1" and items[2]["id"] == "b-3" and items[1]["id"]
    for item in items:
        await _wait_status(api, "greet", item["id"], "complete")

    clash = await api.http.post(f"{INSTANCES}/batch", json=[{"id": "b-new"}, {"id": "b-1"}])
    assert "b-1" in _error(clash, 409, "already_exists")
    _error(await api.http.get(f"{INSTANCES}/b-new"), 404, "not_found")

    too_many = await api.http.post(f"{INSTANCES}/batch", json=[{}] * 101)
    _error(too_many, 413, "payload_too_large")


async def test_list_pages_through_every_instance_with_a_cursor(api: RunningApi) -> None:
    ids = [f"page-{i}" for i in range(7)]
    for instance_id in ids:
        assert (await api.http.post(INSTANCES, json={"id": instance_id})).status_code == 201
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = await api.http.get(INSTANCES, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        assert all(item["workflow"] == "greet" for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))  # newest first, no duplicates, no gaps

    _error(await api.http.get(INSTANCES, params={"cursor": "garbage!"}), 400, "invalid")
    _error(await api.http.get(INSTANCES, params={"limit": 0}), 400, "invalid")


async def test_list_filters_by_status(api: RunningApi) -> None:
    await api.http.post("/workflows/approval/instances", json={"id": "waits"})
    await api.http.post(INSTANCES, json={"id": "done"})
    await _wait_status(api, "greet", "done", "complete")
    await _wait_status(api, "approval", "waits", "waiting")
    page = (
        await api.http.get("/workflows/approval/instances", params={"status": "waiting"})
    ).json()
    assert [i["id"] for i in page["items"]] == ["waits"]
    page = (
        await api.http.get("/workflows/approval/instances", params={"status": "complete"})
    ).json()
    assert page == {"items": [], "next_cursor": None}
    _error(await api.http.get(INSTANCES, params={"status": "bogus"}), 400, "invalid")


async def test_list_workflows(api: RunningApi) -> None:
    response = await api.http.get("/workflows")
    assert response.status_code == 200, response.text
    names = [w["name"] for w in response.json()["items"]]
    assert {"greet", "approval", "sleepy"} <= set(names)


async def test_the_library_worker_leaves_the_collector_alone(api: RunningApi) -> None:
    """Only the CLI's own processes tune the garbage collector (engine._gc): the worker
    serving this API runs in the test's process, which keeps its own settings."""
    await api.http.post("/workflows/collector/instances", json={"id": "gc-lib"})
    done = await _wait_status(api, "collector", "gc-lib", "complete")
    assert done["output"] == {"frozen": gc.get_freeze_count(),
                              "young_threshold": gc.get_threshold()[0]}
    assert done["output"]["young_threshold"] != YOUNG_GENERATION_THRESHOLD


# -- errors ---------------------------------------------------------------------------------------


async def test_unknown_ids_and_routes_are_404(api: RunningApi) -> None:
    _error(await api.http.get(f"{INSTANCES}/nope"), 404, "not_found")
    _error(await api.http.get("/workflows/unknown-workflow/instances/nope"), 404, "not_found")
    _error(await api.http.post(f"{INSTANCES}/nope/events/approval", json={}), 404, "not_found")
    for action in ("pause", "resume", "terminate", "restart"):
        _error(await api.http.post(f"{INSTANCES}/nope/{action}"), 404, "not_found")
    _error(await api.http.get("/no/such/route"), 404, "not_found")
    _error(await api.http.delete("/workflows"), 405, "method_not_allowed")


async def test_duplicate_id_is_409(api: RunningApi) -> None:
    assert (await api.http.post(INSTANCES, json={"id": "dup"})).status_code == 201
    message = _error(await api.http.post(INSTANCES, json={"id": "dup"}), 409, "already_exists")
    assert "dup" in message


async def test_bad_input_is_400(api: RunningApi) -> None:
    _error(await api.http.post(INSTANCES, json={"id": "no spaces!"}), 400, "invalid")
    _error(await api.http.post(INSTANCES, json={"id": "x", "extra": 1}), 400, "invalid")
    _error(
        await api.http.post(
            INSTANCES, content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
        "invalid",
    )
    _error(await api.http.post("/workflows/bad%20name/instances", json={}), 400, "invalid")
    _error(await api.http.post(f"{INSTANCES}/batch", json={"not": "a list"}), 400, "invalid")


async def test_bodies_over_the_limit_are_413(start_api: StartApi) -> None:
    async with start_api(ApiSettings(max_body_bytes=64 * 1024)) as api:
        big = {"params": {"blob": "x" * (65 * 1024)}}
        message = _error(await api.http.post(INSTANCES, json=big), 413, "payload_too_large")
        assert str(64 * 1024) in message

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as received
            yield b'{"params": "'
            for _ in range(20):
                yield b"y" * 8192
            yield b'"}'

        response = await api.http.post(
            INSTANCES, content=chunked(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        _error(response, 413, "payload_too_large")
        # Just under the limit is fine.
        ok = await api.http.post(INSTANCES, json={"params": {"blob": "x" * (60 * 1024)}})
        assert ok.status_code == 201, ok.text


async def test_default_limit_accepts_1_mib_params_and_refuses_more(api: RunningApi) -> None:
    response = await api.http.post(
        INSTANCES, content=b"x" * (7 * MIB), headers={"content-type": "application/json"}
    )
    _error(response, 413, "payload_too_large")
    params = {"blob": "x" * (MIB - 100)}
    response = await api.http.post(INSTANCES, json={"params": params})
    assert response.status_code == 201, response.text
    # Within 1 MiB as Warren writes it, though a client escaped every character (6 bytes
    # each in the request): the body limit leaves room for that.
    params = {"blob": "é" * (MIB // 2 - 100)}
    as_sent = json.dumps({"params": params}).encode()  # é as \u00e9
    assert len(orjson.dumps(params)) < MIB < 2 * MIB < len(as_sent)
    response = await api.http.post(INSTANCES, content=as_sent,
                                   headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text
    _error(await api.http.post(INSTANCES, json={"params": {"blob": "x" * (MIB + 1)}}), 413,
           "payload_too_large")


async def test_values_json_cannot_carry_exactly_are_refused_not_changed(
    api: RunningApi,
) -> None:
    for params in (b'{"params": {"x": NaN}}', b'{"params": [1e400]}',
                   b'{"params": {"y": -Infinity}}'):
        message = _error(await api.http.post(INSTANCES, content=params,
                                             headers={"content-type": "application/json"}),
                         400, "invalid")
        assert "NaN or an infinity" in message
    await api.http.post("/workflows/approval/instances", json={"id": "exact"})
    event = "/workflows/approval/instances/exact/events/approval"
    message = _error(await api.http.post(event, content=b'{"n": 123456789012345678901234567890}'),
                     400, "invalid")
    assert "64-bit" in message
    non_ascii = ("é" * 50).encode()  # an AMQP message id is at most 255 bytes of UTF-8
    _error(await api.http.post(event, content=b"{}", headers={"X-Warren-Event-Id": non_ascii}),
           400, "invalid")
    listed = await api.http.get(INSTANCES, params={"cursor": "cGs6OTk5OTk5OTk5OTk5OTk5OTk5OTk5"})
    _error(listed, 400, "invalid")  # "pk:99999999999999999999999": no key is that large
    empty = await api.http.post(f"{INSTANCES}/batch", json=[])
    assert empty.status_code == 201 and empty.json() == {"items": []}, empty.text


# -- auth -----------------------------------------------------------------------------------------


async def test_bearer_token_is_required_when_configured(start_api: StartApi) -> None:
    async with start_api(ApiSettings(token="s3cret")) as api:
        _error(await api.http.get(INSTANCES), 401, "unauthorized")
        wrong = await api.http.get(INSTANCES, headers={"Authorization": "Bearer nope"})
        _error(wrong, 401, "unauthorized")
        assert wrong.headers["www-authenticate"] == "Bearer"
        _error(await api.http.post(INSTANCES, json={}), 401, "unauthorized")
        _error(await api.http.post(f"{INSTANCES}/x/pause"), 401, "unauthorized")
        _error(await api.http.post(f"{INSTANCES}/x/events/e", json={}), 401, "unauthorized")
        good = {"Authorization": "Bearer s3cret"}
        assert (await api.http.get(INSTANCES, headers=good)).status_code == 200
        assert (await api.http.post(INSTANCES, json={}, headers=good)).status_code == 201
        # Probes and the schema stay public.
        assert (await api.http.get("/healthz")).json() == {"ok": True}
        assert (await api.http.get("/openapi.json")).status_code == 200


async def test_openapi_schema_lists_every_endpoint(api: RunningApi) -> None:
    schema = (await api.http.get("/openapi.json")).json()
    paths = schema["paths"]
    base = "/workflows/{name}/instances"
    assert set(paths) >= {
        "/workflows",
        base,
        f"{base}/batch",
        f"{base}/{{instance_id}}",
        f"{base}/{{instance_id}}/events/{{event_type}}",
        *(f"{base}/{{instance_id}}/{a}" for a in ("pause", "resume", "terminate", "restart")),
    }
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert "InstanceStatus" in schema["components"]["schemas"]
    # Every error a route declares has the error body's shape, 409 and 503 included.
    errors = {(path, method, status): answer for path, methods in paths.items()
              for method, operation in methods.items()
              for status, answer in operation["responses"].items() if status >= "400"}
    assert {status for _, _, status in errors} >= {"400", "404", "409", "503"}
    for where, answer in errors.items():
        assert answer["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}, where


# -- events and control (need Instance.send_event/pause/resume/terminate/restart) ---------------


async def test_event_with_valid_signature_is_delivered(start_api: StartApi) -> None:
    async with start_api(ApiSettings(token="tok", webhook_secret="whsec")) as api:
        auth = {"Authorization": "Bearer tok"}
        await api.http.post("/workflows/approval/instances", json={"id": "ap-1"}, headers=auth)
        url = "/workflows/approval/instances/ap-1/events/approval"
        body = orjson.dumps({"by": "lee"})

        # Without a signature, or with a wrong one, the event is refused (a token is no help).
        _error(await api.http.post(url, content=body, headers=auth), 401, "signature_invalid")
        bad = {SIGNATURE_HEADER: sign("other-secret", body)}
        _error(await api.http.post(url, content=body, headers=bad), 401, "signature_invalid")
        tampered = {SIGNATURE_HEADER: sign("whsec", body)}
        _error(
            await api.http.post(url, content=body + b" ", headers=tampered),
            401,
            "signature_invalid",
        )

        good = {SIGNATURE_HEADER: sign("whsec", body), "content-type": "application/json"}
        response = await api.http.post(url, content=body, headers=good)
        assert response.status_code == 202, response.text
        assert response.json() == {
            "id": "ap-1",
            "workflow": "approval",
            "accepted": "event:approval",
        }
        api.http.headers.update(auth)
        done = await _wait_status(api, "approval", "ap-1", "complete")
        assert done["output"] == {"approved_by": {"by": "lee"}}


async def test_a_timestamped_signature_holds_for_its_own_event_only(start_api: StartApi) -> None:
    """The body-only form can be replayed to any instance (the relay signs nothing else);
    the timestamped form signs the event's target, its id and time as well."""
    async with start_api(ApiSettings(webhook_secret="whsec")) as api:
        for inst in ("ts-1", "ts-2"):
            await api.http.post("/workflows/approval/instances", json={"id": inst})
        body = orjson.dumps({"by": "kim"})
        signed = sign_event("whsec", "approval/ts-1/approval", "evt-1", body)
        one = {SIGNATURE_HEADER: signed, "X-Warren-Event-Id": "evt-1"}
        to = "/workflows/approval/instances/{}/events/{}".format
        for url, headers in (
            (to("ts-2", "approval"), one),  # another instance
            (to("ts-1", "other"), one),  # another event type
            (to("ts-1", "approval"), {**one, "X-Warren-Event-Id": "evt-2"}),  # another id
            (to("ts-1", "approval"), {SIGNATURE_HEADER: sign_event(  # ten minutes old
                "whsec", "approval/ts-1/approval", "evt-1", body, now=time.time() - 600),
                "X-Warren-Event-Id": "evt-1"}),
        ):
            _error(await api.http.post(url, content=body, headers=headers), 401,
                   "signature_invalid")
        # Malformed times are a mismatch (401), never an error of the server.
        for bad_time in ("t=\u00b2,v1=00", "t=" + "9" * 400 + ",v1=00", "t=1,t=2,v1=00"):
            _error(await api.http.post(to("ts-1", "approval"), content=body,
                                       headers={SIGNATURE_HEADER: bad_time.encode("latin-1")}),
                   401, "signature_invalid")
        # Spaces after commas, and several v1 values (a secret being rotated) are fine.
        at, v1 = signed.split(",")
        rotated = f"{at}, v1={'0' * 64}, {v1}"
        accepted = await api.http.post(to("ts-1", "approval"), content=body,
                                       headers={**one, SIGNATURE_HEADER: rotated})
        assert accepted.status_code == 202, accepted.text
        done = await _wait_status(api, "approval", "ts-1", "complete")
        assert done["output"] == {"approved_by": {"by": "kim"}}
        # The CLI's client signs this way.
        remote = ApiClient(api.url, webhook_secret="whsec")
        await asyncio.to_thread(remote.send_event, "approval", "ts-2", "approval", {"by": "cli"})
        assert (await _wait_status(api, "approval", "ts-2", "complete"))["output"] == {
            "approved_by": {"by": "cli"}}


async def test_event_without_secret_needs_the_token_and_valid_json(start_api: StartApi) -> None:
    async with start_api(ApiSettings(token="tok")) as api:
        api.http.headers["Authorization"] = "Bearer tok"
        await api.http.post("/workflows/approval/instances", json={"id": "ap-2"})
        url = "/workflows/approval/instances/ap-2/events/approval"
        _error(await api.http.post(url, content=b"{oops"), 400, "invalid")
        _error(
            await api.http.post("/workflows/approval/instances/ap-2/events/bad type!", json={}),
            400,
            "invalid",
        )
        response = await api.http.post(url, json="yes", headers={"X-Warren-Event-Id": "e-1"})
        assert response.status_code == 202, response.text
        done = await _wait_status(api, "approval", "ap-2", "complete")
        assert done["output"] == {"approved_by": "yes"}
        # A finished instance takes no more events.
        _error(await api.http.post(url, json="again"), 409, "invalid_transition")


async def test_pause_resume_while_sleeping(api: RunningApi) -> None:
    await api.http.post("/workflows/sleepy/instances", json={"id": "nap", "params": {"seconds": 1}})
    await _wait_status(api, "sleepy", "nap", "waiting")
    response = await api.http.post("/workflows/sleepy/instances/nap/pause")
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == "pause"
    await _wait_status(api, "sleepy", "nap", "paused", "waiting_for_pause")
    # A paused instance does not advance, even after its sleep is over (a negative check,
    # so it has to watch for a while).
    for _ in range(15):
        assert (await _status(api, "sleepy", "nap"))["status"] in ("paused", "waiting_for_pause")
        await asyncio.sleep(0.1)
    assert (await api.http.post("/workflows/sleepy/instances/nap/resume")).status_code == 202
    done = await _wait_status(api, "sleepy", "nap", "complete")
    assert done["output"] == ["before", "after"]


async def test_terminate_ends_the_instance(api: RunningApi) -> None:
    await api.http.post(
        "/workflows/sleepy/instances", json={"id": "long", "params": {"seconds": 600}}
    )
    await _wait_status(api, "sleepy", "long", "waiting")
    response = await api.http.post(
        "/workflows/sleepy/instances/long/terminate", json={"rollback": False}
    )
    assert response.status_code == 202, response.text
    await _wait_status(api, "sleepy", "long", "terminated")
    _error(
        await api.http.post("/workflows/sleepy/instances/long/resume"), 409, "invalid_transition"
    )


async def test_restart_runs_the_instance_again(api: RunningApi) -> None:
    await api.http.post(INSTANCES, json={"id": "again", "params": {"name": "bo"}})
    first = await _wait_status(api, "greet", "again", "complete")
    response = await api.http.post(f"{INSTANCES}/again/restart")
    assert response.status_code == 202, response.text

    async def rerun() -> bool:
        status = await _status(api, "greet", "again")
        return status["status"] == "complete" and status["output"] != first["output"]

    await eventually(rerun, timeout=15, message="restarted instance completes again")
    second = await _status(api, "greet", "again")
    assert second["params"] == {"name": "bo"}
    assert second["output"]["ran_at"] > first["output"]["ran_at"]
    _error(await api.http.post(f"{INSTANCES}/again/restart", json={"from_step": 5}), 400, "invalid")


async def test_unexpected_errors_are_500_json(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(_self: Client) -> list[str]:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(Client, "workflows", broken)
    message = _error(await api.http.get("/workflows"), 500, "internal")
    assert "fire" not in message  # details go to the server log, not to callers
    assert (await api.http.get("/healthz")).status_code == 200


async def test_cli_client_signs_events_and_sends_the_token(start_api: StartApi) -> None:
    async with start_api(ApiSettings(token="tok", webhook_secret="whsec")) as api:
        api.http.headers["Authorization"] = "Bearer tok"
        await api.http.post("/workflows/approval/instances", json={"id": "cli-sig"})
        remote = ApiClient(api.url, token="tok", webhook_secret="whsec")
        # The CLI's client is synchronous: run it off the loop that serves the API.
        answer = await asyncio.to_thread(
            remote.send_event, "approval", "cli-sig", "approval", {"by": "cli"}
        )
        assert answer["accepted"] == "event:approval"
        done = await _wait_status(api, "approval", "cli-sig", "complete")
        assert done["output"] == {"approved_by": {"by": "cli"}}

        unsigned = ApiClient(api.url, token="tok", webhook_secret="wrong")
        with pytest.raises(ApiCallError) as failure:
            await asyncio.to_thread(unsigned.send_event, "approval", "cli-sig", "approval", 1)
        assert failure.value.code == "signature_invalid" and failure.value.status == 401


async def test_an_unreachable_broker_or_database_answers_503(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from broker import PublishError

    created = await api.http.post(INSTANCES, json={"id": "outage"})
    assert created.status_code == 201, created.text
    backend = api.client._backend

    async def broker_gone(*_args: Any, **_kwargs: Any) -> None:
        raise PublishError("3 messages not all confirmed within 10 s")

    async def database_gone(*_args: Any, **_kwargs: Any) -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError(111, "refused"))

    monkeypatch.setattr(backend, "control", broker_gone)
    monkeypatch.setattr(backend, "status", database_gone)
    for response in (await api.http.post(f"{INSTANCES}/outage/pause"),
                     await api.http.get(f"{INSTANCES}/outage")):
        assert "cannot be reached" in _error(response, 503, "unavailable")
    monkeypatch.undo()
    assert (await api.http.get(f"{INSTANCES}/outage")).status_code == 200


def test_only_an_unreachable_service_is_a_503_not_a_bug_in_sql() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from broker import PublishError
    from engine._http._errors import _unreachable

    def wrapped(orig: Exception) -> OperationalError:
        return OperationalError("SELECT 1", {}, orig)

    assert _unreachable(PublishError("not confirmed"))
    assert _unreachable(OSError(113, "No route to host"))
    assert _unreachable(OSError("Multiple exceptions: [Errno 111] ..., [Errno 111] ..."))
    assert _unreachable(ConnectionRefusedError(111, "refused"))
    assert _unreachable(wrapped(ConnectionRefusedError(111, "refused")))
    assert _unreachable(wrapped(sqlite3.OperationalError("database is locked")))
    assert not _unreachable(wrapped(sqlite3.OperationalError('near "SELEC": syntax error')))
    assert not _unreachable(wrapped(sqlite3.OperationalError("no such table: warren_x")))
    assert not _unreachable(FileNotFoundError("warren.db"))
    assert not _unreachable(ValueError("a bug"))
