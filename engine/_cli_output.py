"""What the ``warren`` CLI prints for people: instance and step tables, icons, durations.

Colours and Unicode icons are used only on a terminal that can show them (``NO_COLOR`` is
honoured); piped output stays plain ASCII-safe text. ``--json`` output bypasses all of this.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from sdk import InstanceStatus

_RESET = "\x1b[0m"
_COLORS = {
    "green": "\x1b[32m",
    "red": "\x1b[31m",
    "yellow": "\x1b[33m",
    "cyan": "\x1b[36m",
    "blue": "\x1b[34m",
    "dim": "\x1b[2m",
    "bold": "\x1b[1m",
}

# status -> (unicode icon, ascii icon, colour)
_STATUS_STYLE = {
    "complete": ("✔", "+", "green"),
    "succeeded": ("✔", "+", "green"),
    "errored": ("✖", "x", "red"),
    "failed": ("✖", "x", "red"),
    "terminated": ("■", "#", "yellow"),
    "running": ("▶", ">", "cyan"),
    "waiting": ("◷", "~", "blue"),
    "sleeping": ("◷", "~", "blue"),
    "retrying": ("↻", "r", "yellow"),
    "paused": ("‖", "|", "yellow"),
    "waiting_for_pause": ("‖", "|", "yellow"),
    "queued": ("○", ".", "dim"),
}


@dataclass(frozen=True, slots=True)
class Style:
    """How to decorate text for one output stream."""

    color: bool = False
    unicode: bool = False
    width: int = 200

    @classmethod
    def for_stream(cls, stream: TextIO) -> Style:
        """Colour on a terminal without ``NO_COLOR``; Unicode when the encoding allows it.

        JSON values are cut to the terminal's width, or to 200 characters when piped.
        """
        tty = stream.isatty()
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        width = shutil.get_terminal_size().columns if tty else 200
        return cls(
            color=tty and "NO_COLOR" not in os.environ, unicode=encoding == "utf8", width=width
        )

    def paint(self, text: str, color: str | None) -> str:
        if not self.color or color is None:
            return text
        return f"{_COLORS[color]}{text}{_RESET}"

    def status(self, status: str) -> str:
        """``icon status``, coloured."""
        uni, ascii_, color = _STATUS_STYLE.get(status, ("?", "?", None))
        return self.paint(f"{uni if self.unicode else ascii_} {status}", color)


def json_text(data: Any) -> str:
    """Indented JSON, for ``--json``."""
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


def parse_time(value: str | None) -> datetime | None:
    """An ISO-8601 timestamp of the API, or ``None``."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_duration(seconds: float | None) -> str:
    """``230ms``, ``2.4s``, ``3m05s``, ``2h03m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def elapsed(start: str | None, end: str | None, now: datetime | None = None) -> float | None:
    """Seconds from ``start`` to ``end`` (or to now while it runs)."""
    began = parse_time(start)
    if began is None:
        return None
    ended = parse_time(end) or now or datetime.now(UTC)
    return max(0.0, (ended - began).total_seconds())


def short_time(value: str | None, suffix: str = "") -> str:
    """``2025-01-31 12:00:05`` (UTC) followed by ``suffix``, or ``-``."""
    parsed = parse_time(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S") + suffix if parsed else "-"


def compact(value: Any, width: int = 100) -> str:
    """A JSON value on one line, cut to ``width`` characters."""
    width = max(width, 20)
    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def step_status(step: Mapping[str, Any]) -> str:
    """A step's state in words: succeeded, failed, running, sleeping, retrying, waiting."""
    if step.get("success") is True:
        return "succeeded"
    if step.get("success") is False:
        return "failed"
    state = step.get("state")
    if state == "backoff":
        return "retrying"
    if state == "waiting" or step.get("type") in ("sleep", "sleep_until", "wait_for_event"):
        return "sleeping" if step.get("type") in ("sleep", "sleep_until") else "waiting"
    return "running"


def error_text(error: Mapping[str, Any] | None) -> str:
    """``Name: message`` of an error JSON."""
    if not error:
        return ""
    return f"{error.get('name', 'Error')}: {error.get('message', '')}"


def attempts_text(step: Mapping[str, Any]) -> str:
    """``1``, or ``3 (2 failed)``; ``-`` for steps without attempts."""
    attempts = step.get("attempts") or []
    if not attempts:
        return "-"
    failed = sum(1 for a in attempts if a.get("success") is False)
    return f"{len(attempts)} ({failed} failed)" if failed else str(len(attempts))


def table(
    headers: Sequence[str], rows: Sequence[Sequence[tuple[str, str | None]]], style: Style
) -> list[str]:
    """Aligned columns; each cell is ``(text, colour)`` and is padded before painting."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = [
        style.paint(
            "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), "bold"
        )
    ]
    for row in rows:
        cells = [
            style.paint(text.ljust(w), color) for (text, color), w in zip(row, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _status_cell(status: str, style: Style) -> tuple[str, str | None]:
    uni, ascii_, color = _STATUS_STYLE.get(status, ("?", "?", None))
    return f"{uni if style.unicode else ascii_} {status}", color


def describe(status: Mapping[str, Any], style: Style, now: datetime | None = None) -> str:
    """The human form of ``warren instances describe``: header, then one row per step."""
    lines = [style.paint(f"{status['workflow']} / {status['id']}", "bold")]
    took = elapsed(status.get("started") or status.get("created"), status.get("ended"), now)
    fields = [
        ("status", style.status(str(status["status"]))),
        ("created", short_time(status.get("created"), " UTC")),
        ("started", short_time(status.get("started"), " UTC")),
        ("ended", short_time(status.get("ended"), " UTC")),
        ("duration", format_duration(took) if status.get("started") else "-"),
        ("params", compact(status.get("params"), style.width - 12)),
    ]
    if status.get("output") is not None or status.get("status") == "complete":
        fields.append(("output", compact(status.get("output"), style.width - 12)))
    if status.get("error"):
        fields.append(("error", style.paint(error_text(status["error"]), "red")))
    rollback = status.get("rollback")
    if rollback:
        text = str(rollback.get("outcome"))
        if rollback.get("error"):
            text += f" ({error_text(rollback['error'])})"
        fields.append(("rollback", text))
    lines += [f"  {key:<9} {value}" for key, value in fields]
    steps = status.get("steps") or []
    lines.append("")
    if not steps:
        lines.append("  (no steps yet)")
        return "\n".join(lines)
    rows, notes = [], {}
    for index, step in enumerate(steps):
        state = step_status(step)
        name = str(step["name"])
        if step.get("count", 1) and int(step.get("count", 1)) > 1:
            name += f" #{step['count']}"
        rows.append(
            [
                _status_cell(state, style),
                (name, None),
                (str(step.get("type")), "dim"),
                (format_duration(elapsed(step.get("start"), step.get("end"), now)), None),
                (attempts_text(step), None),
            ]
        )
        notes[index] = _step_notes(step, state)
    table_lines = table(["STATUS", "STEP", "TYPE", "DURATION", "ATTEMPTS"], rows, style)
    lines.append("  " + table_lines[0])
    for index, line in enumerate(table_lines[1:]):
        lines.append("  " + line)
        lines += ["      " + style.paint(note, "dim") for note in notes[index]]
    return "\n".join(lines)


def _step_notes(step: Mapping[str, Any], state: str) -> list[str]:
    notes = []
    for number, attempt in enumerate(step.get("attempts") or [], start=1):
        if attempt.get("success") is False and attempt.get("error"):
            notes.append(f"attempt {number}: {error_text(attempt['error'])}")
    if state == "failed" and step.get("error") and not notes:
        notes.append(error_text(step["error"]))
    if state in ("sleeping", "retrying", "waiting") and step.get("wake_at"):
        notes.append(f"until {short_time(step['wake_at'])}")
    return notes


def instances_table(page: Mapping[str, Any], style: Style) -> str:
    """The human form of ``warren instances list``."""
    items = page.get("items") or []
    if not items:
        return "no instances"
    rows = [
        [
            _status_cell(str(i.get("status")), style),
            (str(i["id"]), None),
            (short_time(i.get("created")), None),
            (
                format_duration(elapsed(i.get("started"), i.get("ended")))
                if i.get("started")
                else "-",
                None,
            ),
        ]
        for i in items
    ]
    lines = table(["STATUS", "ID", "CREATED (UTC)", "DURATION"], rows, style)
    if page.get("next_cursor"):
        lines += ["", f"more: --cursor {page['next_cursor']}"]
    return "\n".join(lines)


def step_event(step: Mapping[str, Any], style: Style) -> str:
    """One line about a step that just finished, for ``warren run``'s live output."""
    state = step_status(step)
    took = format_duration(elapsed(step.get("start"), step.get("end")))
    line = f"  {style.status(state)}  {step['name']}  {style.paint(took, 'dim')}"
    failed = sum(1 for a in step.get("attempts") or [] if a.get("success") is False)
    if failed and state == "succeeded":
        line += style.paint(f"  (after {failed} failed attempt{'s' * (failed > 1)})", "yellow")
    return line


class RunProgress:
    """Prints, once each, the retries and finished steps seen while following an instance.

    Args:
        style: How to print.
        where: Where the state is stored, for the first line.
    """

    def __init__(self, style: Style, where: str) -> None:
        self.style = style
        self.where = where
        self.seen: set[tuple[Any, ...]] = set()

    def __call__(self, status: InstanceStatus) -> None:
        if not self.seen:
            print(f"Running {status.workflow} (instance {status.id}); state in {self.where}")
            self.seen.add(("started",))
        for step in status.steps:
            key = (step["name"], step.get("count"))
            failures = [a for a in step.get("attempts") or [] if a.get("success") is False]
            for number, attempt in enumerate(failures, start=1):
                if step.get("success") is None and (*key, "failed", number) not in self.seen:
                    self.seen.add((*key, "failed", number))
                    text = (
                        f"  attempt {number} of {step['name']!r} failed: "
                        f"{error_text(attempt.get('error'))}; retrying"
                    )
                    print(self.style.paint(text, "yellow"))
            if step.get("success") is not None and (*key, "done") not in self.seen:
                self.seen.add((*key, "done"))
                print(step_event(step, self.style))
        sys.stdout.flush()


def stdout_style() -> Style:
    """The style of ``sys.stdout``."""
    return Style.for_stream(sys.stdout)
