"""A private event loop that runs workflow code deterministically, driven by the engine.

Like Temporal's Python SDK, ``run()`` executes on its own ``AbstractEventLoop`` that only
advances when the engine drives it: callbacks run in FIFO order until none is ready, which
is the end of a replay step. Anything needing real time or I/O is a determinism error,
raised inside ``run()`` so the instance fails with a message instead of hanging a worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from sdk.errors import NonDeterminismError

_USE_STEPS = (
    "workflow code may not use real time or I/O outside steps; use step.sleep / "
    "step.sleep_until for waiting and put I/O inside step.do"
)


class ReplayLoop(asyncio.AbstractEventLoop):
    """Runs ready callbacks on demand; has no clock, no I/O and no threads."""

    def __init__(self) -> None:
        self._ready: deque[asyncio.Handle] = deque()

    def run_until_idle(self) -> None:
        """Run callbacks until none is ready. Nested inside the worker's real loop.

        The cyclic garbage collector is held off meanwhile: a finalizer it ran here (a
        pooled connection closing itself, say) would find this loop running and bind its
        futures to it, where nothing ever resolves them (an aiosqlite thread answering one
        died of ``call_soon_threadsafe``). It collects at the next allocation after.
        """
        outer = asyncio.events._get_running_loop()
        collecting = gc.isenabled()
        gc.disable()
        asyncio.events._set_running_loop(self)
        try:
            while self._ready:
                handle = self._ready.popleft()
                if not handle.cancelled():
                    handle._run()
        finally:
            asyncio.events._set_running_loop(outer)
            if collecting:
                gc.enable()

    # -- what asyncio's futures and tasks need ------------------------------------------
    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(  # type: ignore[override]
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return False

    def get_task_factory(self) -> None:
        return None

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # Tasks left pending when a replay is discarded are expected: the next turn replays
        # them again from history. Nothing else reaches here with an unhandled error.
        return None

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        return None

    # -- everything that would make run() depend on the world ---------------------------
    def time(self) -> NoReturn:
        raise NonDeterminismError(_USE_STEPS)

    def call_later(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        raise NonDeterminismError(f"asyncio.sleep and timers in run(): {_USE_STEPS}")

    def call_at(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        raise NonDeterminismError(f"asyncio timers in run(): {_USE_STEPS}")

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        raise NonDeterminismError(f"threads in run(): {_USE_STEPS}")

    def run_in_executor(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        raise NonDeterminismError(f"run_in_executor in run(): {_USE_STEPS}")
