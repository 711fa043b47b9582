"""The decorator form of ``step.do``: a callable step with rollback and DAG dependencies."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sdk._config import StepConfig

if TYPE_CHECKING:
    from sdk._workflow import WorkflowStep


class StepFunction:
    """A function turned into a step by ``@step.do(...)``; call it to run the step.

    Dependencies are the steps in ``depends=[...]`` or, without it, the earlier decorated
    steps whose function names match this function's parameter names (Cloudflare's Python
    DAG rule). Their results are passed in, and a dependency already called is not run again.
    """

    def __init__(
        self,
        step: WorkflowStep,
        name: str,
        body: Callable[..., Any],
        config: StepConfig,
        rollback: Callable[..., Any] | None,
        rollback_config: StepConfig,
        depends: list[StepFunction],
        concurrent: bool,
    ) -> None:
        self.name = name
        self._step = step
        self._body = body
        self._config = config
        self._rollback = rollback
        self._rollback_config = rollback_config
        self._concurrent = concurrent
        self._last_call: Awaitable[Any] | None = None
        registry: dict[str, StepFunction] = step.__dict__.setdefault("_step_functions", {})
        params = [p for p in inspect.signature(body).parameters if p != "ctx"]
        if depends:
            self._depends: list[tuple[str | None, StepFunction]] = [(None, d) for d in depends]
        else:
            self._depends = [(p, registry[p]) for p in params if p in registry]
        registry[getattr(body, "__name__", name)] = self
        functools.update_wrapper(self, body)

    def rollback(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``handler(ctx)`` as this step's compensation (saga rollback)."""
        self._rollback = handler
        return handler

    def __call__(self) -> Awaitable[Any]:
        """Run the step (after its dependencies) and return an awaitable of its result."""
        if self._depends:
            call: Awaitable[Any] = asyncio.ensure_future(self._run_after_dependencies())
        else:
            call = self._start(self._body)
        self._last_call = call
        return call

    def _dependency_call(self) -> Awaitable[Any]:
        return self._last_call if self._last_call is not None else self()

    def _start(self, body: Callable[..., Any]) -> Awaitable[Any]:
        return self._step._start_step(
            self.name, body, self._config, self._rollback, self._rollback_config
        )

    async def _run_after_dependencies(self) -> Any:
        if self._concurrent:
            results = list(
                await asyncio.gather(*(dep._dependency_call() for _, dep in self._depends))
            )
        else:
            results = [await dep._dependency_call() for _, dep in self._depends]
        positional = [r for (param, _), r in zip(self._depends, results, strict=True) if not param]
        named = {param: r for (param, _), r in zip(self._depends, results, strict=True) if param}
        return await self._start(functools.partial(self._body, *positional, **named))
