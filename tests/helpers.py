"""Small helpers shared by the test suites.

Import them from tests, e.g. ``from tests.helpers import eventually``.
"""

# A deadline parameter is the whole point of ``eventually``:

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "assert_eventually",
    "asyncpg_dsn",
    "eventually",
    "in_ci",
    "record_driver_statements",
    "redact_url",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TRUTHY_CI_VALUES = frozenset({"true", "1"})


def in_ci() -> bool:
    """Tell whether the tests run in CI.

    Returns:
        True when the ``CI`` environment variable is ``"true"`` or ``"1"``
        (case-insensitive), False otherwise.
    """
    return os.environ.get("CI", "").strip().lower() in _TRUTHY_CI_VALUES


def redact_url(url: str) -> str:
    """Hide the password of a URL or DSN so that it can be logged.

    Args:
        url: Any ``scheme://user:password@host/...`` URL.

    Returns:
        The same URL with the password replaced by ``***``; the input unchanged
        when it has no password.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """Turn a SQLAlchemy PostgreSQL URL into a DSN that asyncpg accepts.

    Args:
        sqlalchemy_url: A URL such as ``postgresql+asyncpg://user@host:5432/db``.

    Returns:
        The URL with the ``+driver`` suffix removed from the scheme, e.g.
        ``postgresql://user@host:5432/db``.
    """
    parts = urlsplit(sqlalchemy_url)
    scheme = parts.scheme.split("+", 1)[0]
    return urlunsplit(parts._replace(scheme=scheme))


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    message: str | None = ...,
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    message: str | None = ...,
) -> T: ...


async def eventually(
    predicate: Callable[[], object],
    timeout: float = 5.0,
    interval: float = 0.05,
    message: str | None = None,
) -> object:
    """Poll a condition until it holds or a deadline passes.

    The predicate is called repeatedly (awaiting its result when it is
    awaitable) until it returns a truthy value. An ``AssertionError`` raised by
    the predicate counts as "not yet", so predicates may use plain ``assert``
    statements; any other exception propagates at once. The predicate is always
    evaluated one last time at the deadline.

    Args:
        predicate: A zero-argument callable, usually an ``async def`` function,
            returning a value that is truthy once the condition holds.
        timeout: Seconds to keep trying before failing.
        interval: Seconds to sleep between attempts.
        message: What was awaited, used in the failure message.

    Returns:
        The first truthy value returned by the predicate.

    Raises:
        AssertionError: If the condition did not hold within ``timeout``
            seconds. The message names the condition, the number of attempts,
            and the last value or assertion error seen.
        ValueError: If ``timeout`` is negative or ``interval`` is not positive.
    """
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval!r}")

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts = 0
    last_value: object = None
    last_error: AssertionError | None = None

    while True:
        attempts += 1
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
        except AssertionError as exc:
            last_error = exc
            last_value = None
        else:
            if result:
                return result
            last_error = None
            last_value = result

        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await asyncio.sleep(min(interval, remaining))

    what = message or getattr(predicate, "__qualname__", repr(predicate))
    detail = (
        f"last assertion error: {last_error!r}"
        if last_error is not None
        else f"last value: {last_value!r}"
    )
    text = f"condition not met within {timeout:g}s ({attempts} attempts): {what}; {detail}"
    logger.debug(text)
    raise AssertionError(text) from last_error


#: Alias of :func:`eventually`, for tests that read better with it.
assert_eventually = eventually


def record_driver_statements(db: Any, monkeypatch: Any) -> list[tuple[str, tuple[Any, ...]]]:
    """Record the statements run on ``db``'s driver connections (``Database.driver``, asyncpg
    outside SQLAlchemy, which SQLAlchemy's cursor events do not see).

    Returns:
        A list that fills with ``(sql, args)`` as the statements run, in order.
    """
    seen: list[tuple[str, tuple[Any, ...]]] = []
    driver = db.driver

    @asynccontextmanager
    async def recording() -> AsyncIterator[_RecordingConnection]:
        async with driver() as conn:
            yield _RecordingConnection(conn, seen)

    monkeypatch.setattr(db, "driver", recording)
    return seen


class _RecordingConnection:
    def __init__(self, conn: Any, seen: list[tuple[str, tuple[Any, ...]]]) -> None:
        self._conn = conn
        self._seen = seen

    async def fetch(self, sql: str, *args: Any) -> Any:
        self._seen.append((sql, args))
        return await self._conn.fetch(sql, *args)
