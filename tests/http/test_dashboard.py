"""The dashboard of ``warren dev`` (API.md §2): pages over the running API, real requests."""

from __future__ import annotations

from html.parser import HTMLParser

from engine._http._config import ApiSettings
from tests.http.conftest import RunningApi, StartApi
from tests.http.test_api import _error, _wait_status


class _Page(HTMLParser):
    """What a page shows: its links, table cells, forms and whether it reloads itself."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: dict[str, str] = {}
        self.cells: list[str] = []
        self.forms: list[str] = []
        self.refreshes = False
        self._href: str | None = None
        self._in_cell = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a":
            self._href = found.get("href")
        elif tag == "td":
            self._in_cell = True
            self.cells.append("")
        elif tag == "form":
            self.forms.append(found.get("action") or "")
        elif tag == "meta" and found.get("http-equiv") == "refresh":
            self.refreshes = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None
        elif tag == "td":
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links[data] = self._href
        if self._in_cell:
            self.cells[-1] += data


async def _page(api: RunningApi, path: str) -> _Page:
    response = await api.http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return _Page(response.text)


async def test_workflows_instances_and_an_instance_with_its_steps(api: RunningApi) -> None:
    redirect = await api.http.get("/")
    assert redirect.status_code == 307 and redirect.headers["location"] == "/dashboard"
    await api.http.post("/workflows/approval/instances", json={"id": "dash-1"})
    await _wait_status(api, "approval", "dash-1", "waiting")

    home = await _page(api, "/dashboard")
    assert home.links["approval"] == "/dashboard/approval"
    listing = await _page(api, home.links["approval"])
    assert listing.links["dash-1"] == "/dashboard/approval/dash-1"
    assert "waiting" in listing.cells
    assert (await _page(api, "/dashboard/approval?status=complete")).links.get("dash-1") is None

    live = await _page(api, listing.links["dash-1"])
    assert live.refreshes  # not finished: the page reloads itself
    assert "wait for approval" in live.cells and "wait_for_event" in live.cells
    assert "/dashboard/approval/dash-1/event" in live.forms

    # The event form posts, and the dashboard comes back to the instance.
    sent = await api.http.post("/dashboard/approval/dash-1/event",
                               data={"type": "approval", "payload": '{"by": "dash"}'})
    assert sent.status_code == 303 and sent.headers["location"] == "/dashboard/approval/dash-1"
    await _wait_status(api, "approval", "dash-1", "complete")
    done = await _page(api, "/dashboard/approval/dash-1")
    assert not done.refreshes
    assert any('"by": "dash"' in cell for cell in done.cells)
    # A control the status does not allow says why, as the API does.
    _error(await api.http.post("/dashboard/approval/dash-1/pause"), 409, "invalid_transition")
    _error(await api.http.post("/dashboard/approval/dash-1/event",
                               data={"type": "approval", "payload": "{not json"}),
           400, "invalid")


async def test_values_are_shown_as_text_never_as_markup(api: RunningApi) -> None:
    script = "<script>alert(1)</script>"
    await api.http.post("/workflows/greet/instances", json={"id": "x", "params": {"name": script}})
    await _wait_status(api, "greet", "x", "complete")
    text = (await api.http.get("/dashboard/greet/x")).text
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


async def test_the_dashboard_needs_the_token_when_one_is_set(start_api: StartApi) -> None:
    async with start_api(ApiSettings(token="s3cret")) as api:
        _error(await api.http.get("/dashboard"), 401, "unauthorized")
        good = await api.http.get("/dashboard", headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200


async def test_a_browser_on_another_site_cannot_change_anything(api: RunningApi) -> None:
    """Without a token, any web page could post a form to a local dashboard or API."""
    await api.http.post("/workflows/approval/instances", json={"id": "csrf-1"})
    evil = {"Origin": "https://evil.example"}
    for path in ("/dashboard/approval/csrf-1/terminate",
                 "/workflows/approval/instances/csrf-1/terminate",
                 "/workflows/approval/instances/csrf-1/events/approval"):
        _error(await api.http.post(path, headers=evil), 403, "forbidden")
        _error(await api.http.post(path, headers={"Sec-Fetch-Site": "cross-site"}), 403,
               "forbidden")
    assert (await _wait_status(api, "approval", "csrf-1", "waiting"))["status"] == "waiting"
    # Behind a proxy that rewrites Host, the browser's own word counts; default ports are
    # no difference.
    proxied = {"Origin": "https://warren.example.com", "Sec-Fetch-Site": "same-origin"}
    _error(await api.http.post("/dashboard/approval/csrf-1/event", headers=proxied,
                               data={"type": "approval", "payload": "{not json"}),
           400, "invalid")  # through the guard, refused for its payload
    port_80 = {"Origin": "http://localhost", "Host": "localhost:80"}
    _error(await api.http.post("/dashboard/approval/csrf-1/event", headers=port_80,
                               data={"type": "approval", "payload": "{not json"}),
           400, "invalid")
    _error(await api.http.post("/dashboard/approval/csrf-1/terminate",
                               headers={"Origin": "null"}), 403, "forbidden")
    # Reading is not refused, and the dashboard's own forms (same origin) work.
    assert (await api.http.get("/dashboard", headers=evil)).status_code == 200
    same = {"Origin": api.url, "Sec-Fetch-Site": "same-origin"}
    sent = await api.http.post("/dashboard/approval/csrf-1/event", headers=same,
                               data={"type": "approval", "payload": "1"})
    assert sent.status_code == 303, sent.text
    await _wait_status(api, "approval", "csrf-1", "complete")


async def test_the_event_form_refuses_what_the_api_refuses(api: RunningApi) -> None:
    await api.http.post("/workflows/approval/instances", json={"id": "form-1"})
    too_big = {"type": "approval", "payload": '{"n": 123456789012345678901234567890}'}
    message = _error(await api.http.post("/dashboard/approval/form-1/event", data=too_big),
                     400, "invalid")
    assert "64-bit" in message
    not_utf8 = await api.http.post("/dashboard/approval/form-1/event", content=b"type=\xff",
                                   headers={"content-type": "application/x-www-form-urlencoded"})
    _error(not_utf8, 400, "invalid")
