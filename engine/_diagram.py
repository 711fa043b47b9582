"""Diagrams from code: a workflow's ``run`` read as a flow of steps (``warren diagram``).

The diagram is drawn from the source, not from a run, as Cloudflare draws its workflow
diagrams: every ``step.do`` / ``sleep`` / ``sleep_until`` / ``wait_for_event`` the code can
reach, in order, with the structure around them — ``asyncio.gather`` as parallel branches,
``if``/``match`` as decisions, loops, ``try``/``except`` as the path taken when a step fails.
Helper methods of the workflow class that are handed the step object are followed. A step
whose name is computed shows the expression (``charge {item}``). What the code does between
steps is not shown: it is deterministic and has no checkpoint of its own.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sdk._workflow import WorkflowEntrypoint
from sdk.errors import ValidationError

_STEP_CALLS = ("do", "sleep", "sleep_until", "wait_for_event")
_GATHER = ("gather", "asyncio.gather")


@dataclass(frozen=True, slots=True)
class Step:
    """One step call. ``detail``: a sleep's duration or time, a wait's event type."""

    kind: str
    name: str
    line: int
    detail: str | None = None
    rollback: bool = False


@dataclass(frozen=True, slots=True)
class Parallel:
    branches: list[list[Item]]


@dataclass(frozen=True, slots=True)
class Decision:
    """``if``/``else`` (arms ``yes`` and ``no``; an ``elif`` is a decision in the ``no`` arm)
    or ``match`` (an arm per case, and ``no match`` unless the last case catches all)."""

    question: str
    arms: list[tuple[str, list[Item]]]


@dataclass(frozen=True, slots=True)
class Loop:
    """A loop or comprehension; ``parallel``: a comprehension handed to ``gather``."""

    header: str
    body: list[Item]
    parallel: bool = False


@dataclass(frozen=True, slots=True)
class Guarded:
    """``try``: the steps tried, and the handlers that run when one of them fails."""

    body: list[Item]
    handlers: list[tuple[str, list[Item]]]


Item = Step | Parallel | Decision | Loop | Guarded


@dataclass(frozen=True, slots=True)
class Diagram:
    workflow: str
    items: list[Item]

    def to_dict(self) -> dict[str, Any]:
        return {"workflow": self.workflow, "steps": [_item_dict(i) for i in self.items]}

    def mermaid(self) -> str:
        """A Mermaid ``flowchart`` (renders in GitHub, GitLab and most Markdown viewers)."""
        return _Mermaid().render(self)


def diagram_of(workflow: type[WorkflowEntrypoint]) -> Diagram:
    """The diagram of ``workflow``'s ``run``.

    Raises:
        ValidationError: Its source cannot be read (defined in a REPL, say).
    """
    run = _method(workflow, "run")
    if run is None:
        raise ValidationError(f"the source of {workflow.__name__}.run cannot be read")
    params = [a.arg for a in run.args.args]
    if len(params) < 3:
        raise ValidationError(f"{workflow.__name__}.run must take (self, event, step)")
    return Diagram(workflow.name, _Reader(workflow, params[2], ("run",)).block(run.body))


# -- reading the code ---------------------------------------------------------------------------


def _method(cls: type, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    fn = getattr(cls, name, None)
    if fn is None or not callable(fn):
        return None
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        first_line = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        return None
    tree = ast.parse(source)
    ast.increment_lineno(tree, first_line - 1)
    node = tree.body[0]
    return node if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None


@dataclass(slots=True)
class _Decorated:
    """A function decorated with ``@step.do(...)``: called, it runs the step."""

    name: str
    line: int
    depends: list[str]
    concurrent: bool
    rollback: bool


@dataclass(slots=True)
class _Reader:
    workflow: type
    step_var: str
    inlined: tuple[str, ...] = ()  # the helper methods being read (a recursive one is not)
    decorated: dict[str, _Decorated] = field(default_factory=dict)
    called: set[str] = field(default_factory=set)

    def block(self, statements: Sequence[ast.stmt]) -> list[Item]:
        items: list[Item] = []
        for statement in statements:
            items += self.statement(statement)
        return items

    def statement(self, node: ast.stmt) -> list[Item]:
        if isinstance(node, ast.If):
            return self._decision(node)
        if isinstance(node, ast.For | ast.AsyncFor | ast.While):
            header = (f"while {ast.unparse(node.test)}" if isinstance(node, ast.While) else
                      f"for {ast.unparse(node.target)} in {ast.unparse(node.iter)}")
            head = [] if isinstance(node, ast.While) else self.expression(node.iter)
            body = self.block(node.body)
            return [*head, *([Loop(header, body)] if body else []), *self.block(node.orelse)]
        if isinstance(node, ast.Try | ast.TryStar):
            body = self.block(node.body) + self.block(node.orelse)
            handlers = [(f"on {ast.unparse(h.type)}" if h.type else "on any error",
                         self.block(h.body)) for h in node.handlers]
            tried = [Guarded(body, handlers)] if body and handlers else body
            return tried + self.block(node.finalbody)
        if isinstance(node, ast.With | ast.AsyncWith):
            return [*(i for w in node.items for i in self.expression(w.context_expr)),
                    *self.block(node.body)]
        if isinstance(node, ast.Match):
            return self._match(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            self._define(node)
            return []
        if isinstance(node, ast.ClassDef | ast.Lambda):
            return []
        return [i for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr)
                for i in self.expression(child)]

    def _decision(self, node: ast.If) -> list[Item]:
        arms = [("yes", self.block(node.body)), ("no", self.block(node.orelse))]
        taken = [Decision(ast.unparse(node.test), arms)] if any(b for _, b in arms) else []
        return self.expression(node.test) + taken

    def _match(self, node: ast.Match) -> list[Item]:
        arms = [(f"case {ast.unparse(c.pattern)}", self.block(c.body)) for c in node.cases]
        last = node.cases[-1] if node.cases else None
        if last is None or last.guard is not None or not (
                isinstance(last.pattern, ast.MatchAs) and last.pattern.pattern is None):
            arms.append(("no match", []))
        taken = ([Decision(f"match {ast.unparse(node.subject)}", arms)]
                 if any(b for _, b in arms) else [])
        return self.expression(node.subject) + taken

    def expression(self, node: ast.expr) -> list[Item]:
        """The steps an expression runs, in the order it evaluates them."""
        if isinstance(node, ast.Lambda):
            return []  # a step body: not a step call
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp):
            return self._comprehension(node, parallel=False)
        if isinstance(node, ast.Call):
            return self._call(node)
        return [i for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr)
                for i in self.expression(child)]

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp,
                       *, parallel: bool) -> list[Item]:
        header = " ".join(f"for {ast.unparse(g.target)} in {ast.unparse(g.iter)}"
                          for g in node.generators)
        body = self.expression(node.elt)
        return [Loop(header, body, parallel)] if body else []

    def _call(self, node: ast.Call) -> list[Item]:
        func = node.func
        if self._is_step_api(func):
            assert isinstance(func, ast.Attribute)
            if func.attr == "do" and len(node.args) < 2:
                return []  # the decorator form: the step runs when the function is called
            return [self._step(func.attr, node)]
        if ast.unparse(func) in _GATHER:
            branches = [b for b in (self._gathered(a) for a in node.args) if b]
            return [Parallel(branches)] if len(branches) > 1 else [
                i for b in branches for i in b]
        args = [i for a in [*node.args, *(k.value for k in node.keywords)]
                for i in self.expression(a)]
        if isinstance(func, ast.Name) and func.id in self.decorated:
            return args + self._run_decorated(func.id)
        helper = self._helper(node)
        if helper is not None:
            return args + helper
        return ([] if isinstance(func, ast.Name) else self.expression(func)) + args

    def _gathered(self, arg: ast.expr) -> list[Item]:
        """One argument of ``gather``: ``*[... for x in xs]`` runs an item per x at once."""
        if isinstance(arg, ast.Starred):
            arg = arg.value
            if isinstance(arg, ast.ListComp | ast.SetComp | ast.GeneratorExp):
                return self._comprehension(arg, parallel=True)
        return self.expression(arg)

    def _is_step_api(self, func: ast.expr) -> bool:
        return (isinstance(func, ast.Attribute) and func.attr in _STEP_CALLS
                and isinstance(func.value, ast.Name) and func.value.id == self.step_var)

    def _step(self, kind: str, node: ast.Call) -> Step:
        name = _text(node.args[0]) if node.args else "?"
        detail = None
        if kind in ("sleep", "sleep_until", "wait_for_event") and len(node.args) > 1:
            detail = _text(node.args[1])
        rollback = any(k.arg == "rollback" for k in node.keywords)
        return Step(kind, name, node.lineno, detail, rollback)

    def _define(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            if (isinstance(decorator, ast.Call) and self._is_step_api(decorator.func)
                    and isinstance(decorator.func, ast.Attribute)
                    and decorator.func.attr == "do"):
                depends = [ast.unparse(d) for k in decorator.keywords if k.arg == "depends"
                           and isinstance(k.value, ast.List | ast.Tuple) for d in k.value.elts]
                # Cloudflare's Python DAG rule: parameters named after earlier steps too.
                depends += [a.arg for a in node.args.args
                            if a.arg in self.decorated and a.arg not in depends]
                concurrent = any(k.arg == "concurrent" and ast.unparse(k.value) == "True"
                                 for k in decorator.keywords)
                self.decorated[node.name] = _Decorated(
                    _text(decorator.args[0]) if decorator.args else "?", node.lineno, depends,
                    concurrent, any(k.arg == "rollback" for k in decorator.keywords))
            elif (isinstance(decorator, ast.Attribute) and decorator.attr == "rollback"
                  and isinstance(decorator.value, ast.Name)
                  and decorator.value.id in self.decorated):
                self.decorated[decorator.value.id].rollback = True

    def _run_decorated(self, fn: str) -> list[Item]:
        """A decorated step's call: its dependencies not run yet first (together, with
        ``concurrent=True``), then the step."""
        step = self.decorated[fn]
        pending = [d for d in step.depends if d in self.decorated and d not in self.called]
        before = [self._run_decorated(d) for d in pending]
        self.called.add(fn)
        items: list[Item] = ([Parallel(before)] if step.concurrent and len(before) > 1
                             else [i for b in before for i in b])
        return [*items, Step("do", step.name, step.line, None, step.rollback)]

    def _helper(self, node: ast.Call) -> list[Item] | None:
        """A call ``self.method(..., step, ...)``: the steps of that method, inlined."""
        func = node.func
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id == "self" and func.attr not in self.inlined):
            return None
        method = _method(self.workflow, func.attr)
        if method is None:
            return None
        params = [a.arg for a in method.args.args][1:]
        passed = {params[i] for i, a in enumerate(node.args[:len(params)])
                  if isinstance(a, ast.Name) and a.id == self.step_var}
        passed |= {k.arg for k in node.keywords if k.arg and isinstance(k.value, ast.Name)
                   and k.value.id == self.step_var}
        if len(passed) != 1:
            return None
        inner = _Reader(self.workflow, passed.pop(), (*self.inlined, func.attr))
        return inner.block(method.body)


def _text(node: ast.expr) -> str:
    """A name or duration as written: a string as is, an f-string as its template."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) if isinstance(v, ast.Constant) else
                       "{" + ast.unparse(v.value) + "}" for v in node.values
                       if isinstance(v, ast.Constant | ast.FormattedValue))
    return ast.unparse(node)


def _item_dict(item: Item) -> dict[str, Any]:
    if isinstance(item, Step):
        out: dict[str, Any] = {"type": item.kind, "name": item.name, "line": item.line}
        if item.detail is not None:
            out["event_type" if item.kind == "wait_for_event" else "until"
                if item.kind == "sleep_until" else "duration"] = item.detail
        if item.rollback:
            out["rollback"] = True
        return out
    if isinstance(item, Parallel):
        return {"type": "parallel", "branches": [[_item_dict(i) for i in b]
                                                 for b in item.branches]}
    if isinstance(item, Decision):
        return {"type": "decision", "question": item.question,
                "arms": [{"when": w, "steps": [_item_dict(i) for i in b]} for w, b in item.arms]}
    if isinstance(item, Loop):
        return {"type": "loop", "over": item.header, "parallel": item.parallel,
                "steps": [_item_dict(i) for i in item.body]}
    return {"type": "try", "steps": [_item_dict(i) for i in item.body],
            "handlers": [{"on": on, "steps": [_item_dict(i) for i in b]}
                         for on, b in item.handlers]}


# -- drawing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Exit:
    """Where the flow continues from: a node, and how the edge leaving it is labelled."""

    node: str
    label: str | None = None
    dotted: bool = False


class _Mermaid:
    def __init__(self) -> None:
        self._lines: list[str] = []
        self._ids: Iterator[int] = iter(range(1, 1_000_000))

    def render(self, diagram: Diagram) -> str:
        self._lines = ["flowchart TD", f'    start(["{_quote(diagram.workflow)}"])']
        ends = self._items(diagram.items, [_Exit("start")])
        self._lines.append('    finish(["end"])')
        self._edges(ends, "finish")
        return "\n".join(self._lines) + "\n"

    def _node(self, shape: str) -> str:
        node = f"n{next(self._ids)}"
        self._lines.append(f"    {node}{shape}")
        return node

    def _edges(self, exits: list[_Exit], node: str) -> None:
        for e in exits:
            arrow = "-.->" if e.dotted else "-->"
            label = f'|"{_quote(e.label)}"|' if e.label else ""
            self._lines.append(f"    {e.node} {arrow}{label} {node}")

    def _items(self, items: list[Item], entry: list[_Exit]) -> list[_Exit]:
        for item in items:
            entry = self._item(item, entry)
        return entry

    def _item(self, item: Item, entry: list[_Exit]) -> list[_Exit]:
        if isinstance(item, Step):
            node = self._node(_shape(item))
            self._edges(entry, node)
            return [_Exit(node)]
        if isinstance(item, Parallel):
            return [e for b in item.branches for e in self._items(b, entry)]
        if isinstance(item, Decision):
            node = self._node(f'{{"{_quote(item.question)}?"}}')
            self._edges(entry, node)
            return [e for when, body in item.arms
                    for e in self._items(body, [_Exit(node, when)])]
        if isinstance(item, Loop):
            header = f"{item.header}, all at once" if item.parallel else item.header
            node = self._node(f'{{{{"{_quote(header)}"}}}}')
            self._edges(entry, node)
            ends = self._items(item.body, [_Exit(node, "each")])
            if item.parallel:  # the next step waits for them all
                return ends
            self._edges(ends, node)
            return [_Exit(node, "done")]
        # A failure can come from any step tried: the handlers leave the block as a whole.
        block = f"try{next(self._ids)}"
        self._lines.append(f'    subgraph {block} ["try"]')
        ends = self._items(item.body, entry)
        self._lines.append("    end")
        for on, body in item.handlers:
            ends += self._items(body, [_Exit(block, on, dotted=True)])
        return ends


def _shape(step: Step) -> str:
    label = step.name
    if step.kind == "sleep":
        label = f"sleep: {step.name} ({step.detail})"
    elif step.kind == "sleep_until":
        label = f"sleep until: {step.name} ({step.detail})"
    elif step.kind == "wait_for_event":
        label = f"wait for event: {step.name} ({step.detail})"
    if step.rollback:
        label += " ↩ rollback"
    text = _quote(label)
    if step.kind == "wait_for_event":
        return f'[/"{text}"/]'
    if step.kind in ("sleep", "sleep_until"):
        return f'(["{text}"])'
    return f'["{text}"]'


def _quote(text: str) -> str:
    """Text for inside a Mermaid label's quotes."""
    return text.replace('"', "#quot;").replace("\n", " ")
