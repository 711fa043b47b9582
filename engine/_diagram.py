"""Diagrams from code: a workflow's ``run`` read as a flow of steps (``warren diagram``).

The diagram is drawn from the source, not from a run, as Cloudflare draws its workflow
diagrams: every ``step.do`` / ``sleep`` / ``sleep_until`` / ``wait_for_event`` the code can
reach, in order, with the structure around them — ``asyncio.gather`` and task groups as
parallel branches, ``if``/``match``/conditional expressions as decisions, loops,
``try``/``except`` as the path taken when a step fails, ``return`` and ``raise`` as the end
of a path. Helper methods handed the step object and local functions are followed;
decorated steps are drawn where they are called, after the dependencies they still need. A
step whose name is computed shows its template (``charge {item}``). What the code does
between steps is not drawn: it is deterministic and has no checkpoint of its own.

``break`` leaves its loop (past the loop's ``else``), ``continue`` goes back to the loop's
head. Reading code is not running it, so some of it is beyond the diagram: the step object
is not followed once renamed or stored.
"""

from __future__ import annotations

import ast
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sdk._workflow import WorkflowEntrypoint
from sdk.errors import ValidationError

# Each step call's parameters after ``self``: (name, detail), as positions and keywords.
_STEP_CALLS: dict[str, tuple[str, ...]] = {
    "do": ("name",), "sleep": ("name", "duration"), "sleep_until": ("name", "when"),
    "wait_for_event": ("name", "event_type"),
}
_DETAIL_KEYS = {"sleep": "duration", "sleep_until": "until", "wait_for_event": "event_type"}


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
    """A loop or comprehension; ``parallel``: its items are started together (a
    comprehension of step calls not awaited one by one, or handed to ``gather``)."""

    header: str
    body: list[Item]
    parallel: bool = False
    orelse: list[Item] = field(default_factory=list)  # run when the loop ends without break
    endless: bool = False  # ``while True``: left only by ``break``, ``return`` or ``raise``


@dataclass(frozen=True, slots=True)
class Guarded:
    """``try``: the steps tried, and the handlers that run when one of them fails."""

    body: list[Item]
    handlers: list[tuple[str, list[Item]]]


@dataclass(frozen=True, slots=True)
class End:
    """A path that ends here: ``return`` (the workflow completes), ``raise`` (it fails,
    unless ``caught`` by a ``try`` around it), or ``break``/``continue`` (it leaves or
    restarts the innermost loop)."""

    kind: str
    line: int
    caught: bool = False


Item = Step | Parallel | Decision | Loop | Guarded | End


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
    sources = _Sources()
    found = sources.method(workflow, "run")
    if found is None:
        raise ValidationError(f"the source of {workflow.__name__}.run cannot be read")
    run, _ = found
    params = _params(run)
    if len(params) < 3:
        raise ValidationError(f"{workflow.__name__}.run must take (self, event, step)")
    reader = _Reader(workflow, sources, params[2], inlined=("run",), returns_end=True)
    return Diagram(workflow.name, reader.block(run.body))


# -- reading the code ---------------------------------------------------------------------------

_Function = ast.FunctionDef | ast.AsyncFunctionDef


class _Sources:
    """The parsed source files of a workflow's classes (each file parsed once)."""

    def __init__(self) -> None:
        self._trees: dict[str, ast.Module] = {}

    def method(self, cls: type, name: str) -> tuple[_Function, bool] | None:
        """The definition of ``cls``'s method ``name`` (from the class that defines it), and
        whether it is a static method; None when it has no readable source."""
        owner = next((c for c in cls.__mro__ if name in c.__dict__), None)
        if owner is None or owner is object:
            return None
        static = isinstance(owner.__dict__[name], staticmethod)
        try:
            path = inspect.getsourcefile(owner)
            first_line = inspect.getsourcelines(owner)[1]
        except (OSError, TypeError):
            return None
        if path is None:
            return None
        tree = self._tree(path)
        # The class statement at or just after where inspect found it (decorators first).
        classes = sorted((n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                          and n.name == owner.__name__ and n.lineno >= first_line),
                         key=lambda n: n.lineno)
        if not classes:
            return None
        defs = [n for n in classes[0].body if isinstance(n, _Function) and n.name == name]
        return (defs[-1], static) if defs else None

    def _tree(self, path: str) -> ast.Module:
        if path not in self._trees:
            try:
                with open(path, encoding="utf-8") as source:
                    self._trees[path] = ast.parse(source.read(), path)
            except (OSError, SyntaxError, ValueError) as exc:
                raise ValidationError(f"cannot read {path}: {exc}") from None
        return self._trees[path]


def _params(fn: _Function) -> list[str]:
    return [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]


@dataclass(eq=False, slots=True)
class _Decorated:
    """A function decorated with ``@step.do(...)``: called, it runs the step."""

    name: str
    line: int
    depends: list[_Decorated]
    concurrent: bool
    rollback: bool


@dataclass(slots=True)
class _Reader:
    workflow: type
    sources: _Sources
    step_var: str
    inlined: tuple[str, ...] = ()  # helpers and local functions being read (not recursed)
    returns_end: bool = False  # a ``return`` here ends the workflow (in ``run`` itself)
    catching: bool = False  # inside a ``try`` with handlers
    decorated: dict[str, _Decorated] = field(default_factory=dict)
    local: dict[str, _Function] = field(default_factory=dict)
    called: set[_Decorated] = field(default_factory=set)

    def block(self, statements: Sequence[ast.stmt]) -> list[Item]:
        items: list[Item] = []
        for statement in statements:
            items += self.statement(statement)
        return items

    def statement(self, node: ast.stmt) -> list[Item]:
        if isinstance(node, ast.If):
            return self.expression(node.test) + self._decision(
                ast.unparse(node.test), [("yes", lambda: self.block(node.body)),
                                         ("no", lambda: self.block(node.orelse))])
        if isinstance(node, ast.For | ast.AsyncFor):
            header = f"for {ast.unparse(node.target)} in {ast.unparse(node.iter)}"
            return [*self.expression(node.iter),
                    *self._loop(header, self.block(node.body), self.block(node.orelse))]
        if isinstance(node, ast.While):
            # The condition is evaluated before every pass, so its steps are in the loop.
            return self._loop(f"while {ast.unparse(node.test)}",
                              self.expression(node.test) + self.block(node.body),
                              self.block(node.orelse),
                              endless=isinstance(node.test, ast.Constant) and bool(
                                  node.test.value))
        if isinstance(node, ast.Break | ast.Continue):
            return [End("break" if isinstance(node, ast.Break) else "continue", node.lineno)]
        if isinstance(node, ast.Try | ast.TryStar):
            return self._try(node)
        if isinstance(node, ast.With | ast.AsyncWith):
            entered = [i for w in node.items for i in self.expression(w.context_expr)]
            if any("TaskGroup" in ast.unparse(w.context_expr) for w in node.items):
                branches = [b for b in (self.statement(s) for s in node.body) if b]
                return entered + _parallel(branches)
            return entered + self.block(node.body)
        if isinstance(node, ast.Match):
            return self._match(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            self._define(node)
            return []
        if isinstance(node, ast.Return):
            value = self.expression(node.value) if node.value is not None else []
            return value + ([End("return", node.lineno)] if self.returns_end else [])
        if isinstance(node, ast.Raise):
            raised = [i for e in (node.exc, node.cause) if e is not None
                      for i in self.expression(e)]
            return [*raised, End("raise", node.lineno, self.catching)]
        if isinstance(node, ast.ClassDef):
            return []
        return [i for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr)
                for i in self.expression(child)]

    @staticmethod
    def _loop(header: str, body: list[Item], orelse: list[Item], *,
              endless: bool = False) -> list[Item]:
        """A loop is drawn if it runs a step or can end the workflow; one that cannot is
        drawn as its ``else`` alone (its ``break`` and ``continue`` lead nowhere else)."""
        if not _worth_drawing(body):
            return orelse
        return [Loop(header, body, orelse=[] if endless else orelse, endless=endless)]

    def _decision(self, question: str,
                  arms: Sequence[tuple[str, Callable[[], list[Item]]]]) -> list[Item]:
        """Read each arm from the same state; a decorated step counts as called after the
        decision only if every arm called it."""
        before = set(self.called)
        read: list[tuple[str, list[Item]]] = []
        after: set[_Decorated] | None = None
        for when, read_arm in arms:
            self.called.clear()
            self.called.update(before)
            read.append((when, read_arm()))
            after = set(self.called) if after is None else after & self.called
        self.called.clear()
        self.called.update(after if after is not None else before)
        return [Decision(question, read)] if any(items for _, items in read) else []

    def _match(self, node: ast.Match) -> list[Item]:
        arms: list[tuple[str, Callable[[], list[Item]]]] = []
        for case in node.cases:
            label = f"case {ast.unparse(case.pattern)}" + (
                f" if {ast.unparse(case.guard)}" if case.guard is not None else "")
            arms.append((label, functools.partial(self.block, case.body)))
        last = node.cases[-1] if node.cases else None
        if last is None or last.guard is not None or not (
                isinstance(last.pattern, ast.MatchAs) and last.pattern.pattern is None):
            arms.append(("no match", lambda: []))
        return self.expression(node.subject) + self._decision(
            f"match {ast.unparse(node.subject)}", arms)

    def _try(self, node: ast.Try | ast.TryStar) -> list[Item]:
        body = replace(self, catching=bool(node.handlers) or self.catching).block(node.body)
        handlers = [(f"on {ast.unparse(h.type)}" if h.type else "on any error",
                     self.block(h.body)) for h in node.handlers]
        handled = [h for h in handlers if h[1]]
        # ``else`` runs after the body succeeded; its failures are not caught here.
        tried: list[Item] = [Guarded(body, handled)] if handled else body
        return tried + self.block(node.orelse) + self.block(node.finalbody)

    def expression(self, node: ast.expr) -> list[Item]:
        """The steps an expression runs, in the order it evaluates them."""
        if isinstance(node, ast.Lambda):
            return []  # a step body: not a step call
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            return self._comprehension(node, parallel=None)
        if isinstance(node, ast.IfExp):
            return self.expression(node.test) + self._decision(
                ast.unparse(node.test), [("yes", lambda: self.expression(node.body)),
                                         ("no", lambda: self.expression(node.orelse))])
        if isinstance(node, ast.Call):
            return self._call(node)
        return [i for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr)
                for i in self.expression(child)]

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp,
                       *, parallel: bool | None) -> list[Item]:
        """``parallel`` None: the elements are started together unless each is awaited."""
        header = " ".join(f"for {ast.unparse(g.target)} in {ast.unparse(g.iter)}"
                          for g in node.generators)
        element = node.value if isinstance(node, ast.DictComp) else node.elt
        if parallel is None:
            parallel = not isinstance(element, ast.Await)
        body = self.expression(element)
        first = self.expression(node.generators[0].iter)  # evaluated once, before the loop
        return first + ([Loop(header, body, parallel)] if body else [])

    def _call(self, node: ast.Call) -> list[Item]:
        func = node.func
        if self._is_step_api(func):
            assert isinstance(func, ast.Attribute)
            if func.attr == "do" and len(node.args) < 2:
                return []  # the decorator form: the step runs when the function is called
            return [self._step(func.attr, node)]
        if (isinstance(func, ast.Name) and func.id == "gather") or (
                isinstance(func, ast.Attribute) and func.attr == "gather"):
            return _parallel([b for a in node.args for b in self._gathered(a) if b])
        args = [i for a in [*node.args, *(k.value for k in node.keywords)]
                for i in self.expression(a)]
        if isinstance(func, ast.Name) and func.id in self.decorated:
            return args + self._run_decorated(self.decorated[func.id])
        if isinstance(func, ast.Name) and func.id in self.local and func.id not in self.inlined:
            inner = replace(self, inlined=(*self.inlined, func.id), returns_end=False)
            return args + inner.block(self.local[func.id].body)
        helper = self._helper(node)
        if helper is not None:
            return args + helper
        return ([] if isinstance(func, ast.Name) else self.expression(func)) + args

    def _gathered(self, arg: ast.expr) -> list[list[Item]]:
        """The branches one argument of ``gather`` adds: ``*[... for x in xs]`` an item per
        x, all at once; ``*[a, b]`` one branch per element."""
        if isinstance(arg, ast.Starred):
            value = arg.value
            if isinstance(value, ast.ListComp | ast.SetComp | ast.GeneratorExp):
                return [self._comprehension(value, parallel=True)]
            if isinstance(value, ast.List | ast.Tuple):
                return [self.expression(e) for e in value.elts]
            return [self.expression(value)]
        return [self.expression(arg)]

    def _is_step_api(self, func: ast.expr) -> bool:
        return (isinstance(func, ast.Attribute) and func.attr in _STEP_CALLS
                and isinstance(func.value, ast.Name) and func.value.id == self.step_var)

    def _step(self, kind: str, node: ast.Call) -> Step:
        params = _STEP_CALLS[kind]
        name = _argument(node, 0, params[0])
        detail = _argument(node, 1, params[1]) if len(params) > 1 else None
        rollback = any(k.arg == "rollback" for k in node.keywords)
        return Step(kind, _text(name) if name is not None else "?", node.lineno,
                    _text(detail) if detail is not None else None, rollback)

    def _define(self, node: _Function) -> None:
        for decorator in node.decorator_list:
            if (isinstance(decorator, ast.Call) and self._is_step_api(decorator.func)
                    and isinstance(decorator.func, ast.Attribute)
                    and decorator.func.attr == "do"):
                keywords = {k.arg: k.value for k in decorator.keywords if k.arg}
                listed = keywords.get("depends")
                if isinstance(listed, ast.List | ast.Tuple) and listed.elts:
                    names = [ast.unparse(d) for d in listed.elts]
                else:  # without depends=, Cloudflare's Python DAG rule: parameter names
                    names = _params(node)
                concurrent = "concurrent" in keywords and ast.unparse(
                    keywords["concurrent"]) == "True"
                # Bound now: a later step of the same function name is another step.
                depends = [self.decorated[n] for n in names if n in self.decorated]
                self.decorated[node.name] = _Decorated(
                    _text(decorator.args[0]) if decorator.args else "?", decorator.lineno,
                    depends, concurrent, "rollback" in keywords)
                return
            if (isinstance(decorator, ast.Attribute) and decorator.attr == "rollback"
                    and isinstance(decorator.value, ast.Name)
                    and decorator.value.id in self.decorated):
                self.decorated[decorator.value.id].rollback = True
                return
        self.local[node.name] = node

    def _run_decorated(self, step: _Decorated) -> list[Item]:
        """A decorated step's call: the dependencies not called yet first (together, with
        ``concurrent=True``), then the step. A dependency called already is not run again."""
        self.called.add(step)
        before = [self._run_decorated(d) for d in step.depends if d not in self.called]
        items = _parallel(before) if step.concurrent else [i for b in before for i in b]
        return [*items, Step("do", step.name, step.line, None, step.rollback)]

    def _helper(self, node: ast.Call) -> list[Item] | None:
        """A call ``self.method(..., step, ...)``: the steps of that method, inlined."""
        func = node.func
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id == "self" and func.attr not in self.inlined):
            return None
        found = self.sources.method(self.workflow, func.attr)
        if found is None:
            return None
        method, static = found
        params = _params(method)[0 if static else 1:]
        passed = {params[i] for i, a in enumerate(node.args[:len(params)])
                  if isinstance(a, ast.Name) and a.id == self.step_var}
        passed |= {k.arg for k in node.keywords if k.arg and isinstance(k.value, ast.Name)
                   and k.value.id == self.step_var}
        if len(passed) != 1:
            return None
        inner = _Reader(self.workflow, self.sources, passed.pop(), (*self.inlined, func.attr),
                        catching=self.catching)
        return inner.block(method.body)


def _worth_drawing(items: list[Item]) -> bool:
    """Whether ``items`` hold, at any depth, a step call or a ``return``/``raise``."""
    for item in items:
        if isinstance(item, Step) or (isinstance(item, End) and item.kind in ("return",
                                                                               "raise")):
            return True
        nested = (item.branches if isinstance(item, Parallel)
                  else [b for _, b in item.arms] if isinstance(item, Decision)
                  else [item.body, item.orelse] if isinstance(item, Loop)
                  else [item.body, *(b for _, b in item.handlers)] if isinstance(item, Guarded)
                  else [])
        if any(_worth_drawing(b) for b in nested):
            return True
    return False


def _parallel(branches: list[list[Item]]) -> list[Item]:
    """Branches started together; a single one is just its items."""
    return [Parallel(branches)] if len(branches) > 1 else [i for b in branches for i in b]


def _argument(node: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if len(node.args) > position and not isinstance(node.args[position], ast.Starred):
        return node.args[position]
    return next((k.value for k in node.keywords if k.arg == keyword), None)


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
            out[_DETAIL_KEYS[item.kind]] = item.detail
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
        loop = {"type": "loop", "over": item.header, "parallel": item.parallel,
                "steps": [_item_dict(i) for i in item.body]}
        if item.orelse:
            loop["else"] = [_item_dict(i) for i in item.orelse]
        if item.endless:
            loop["endless"] = True
        return loop
    if isinstance(item, End):
        end: dict[str, Any] = {"type": item.kind, "line": item.line}
        if item.caught:
            end["caught"] = True
        return end
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
    """Nodes (and the ``try`` boxes around them) first, edges after: Mermaid puts a node in
    the box where it is first mentioned, edges included."""

    def __init__(self) -> None:
        self._nodes: list[str] = []
        self._edges: list[str] = []
        self._count = 0
        self._failed = False
        # The loops being drawn, innermost last: each one's head and its breaks' exits.
        self._loops: list[tuple[str, list[_Exit]]] = []

    def render(self, diagram: Diagram) -> str:
        self._nodes = [f'    start(["{_quote(diagram.workflow)}"])', '    finish(["end"])']
        self._connect(self._items(diagram.items, [_Exit("start")]), "finish")
        if self._failed:
            self._nodes.append('    failed(["errored"])')
        return "\n".join(["flowchart TD", *self._nodes, *self._edges]) + "\n"

    def _id(self, prefix: str = "n") -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def _node(self, shape: str) -> str:
        node = self._id()
        self._nodes.append(f"    {node}{shape}")
        return node

    def _connect(self, exits: list[_Exit], node: str) -> None:
        for e in exits:
            arrow = "-.->" if e.dotted else "-->"
            label = f'|"{_quote(e.label)}"|' if e.label else ""
            self._edges.append(f"    {e.node} {arrow}{label} {node}")

    def _items(self, items: list[Item], entry: list[_Exit]) -> list[_Exit]:
        for item in items:
            entry = self._item(item, entry)
        return entry

    def _item(self, item: Item, entry: list[_Exit]) -> list[_Exit]:
        if isinstance(item, Step):
            node = self._node(_shape(item))
            self._connect(entry, node)
            return [_Exit(node)]
        if isinstance(item, End):
            if item.kind == "break":
                self._loops[-1][1].extend(entry)
            elif item.kind == "continue":
                self._connect(entry, self._loops[-1][0])
            elif item.kind == "return":
                self._connect(entry, "finish")
            elif not item.caught:
                self._failed = True
                self._connect(entry, "failed")
            return []  # a caught raise leaves through its try's handlers
        if isinstance(item, Parallel):
            return [e for b in item.branches for e in self._items(b, entry)]
        if isinstance(item, Decision):
            node = self._node(f'{{"{_quote(item.question)}?"}}')
            self._connect(entry, node)
            return [e for when, body in item.arms
                    for e in self._items(body, [_Exit(node, when)])]
        if isinstance(item, Loop):
            header = f"{item.header}, all at once" if item.parallel else item.header
            node = self._node(f'{{{{"{_quote(header)}"}}}}')
            self._connect(entry, node)
            broken: list[_Exit] = []
            self._loops.append((node, broken))
            ends = self._items(item.body, [_Exit(node, "each")])
            self._loops.pop()
            if item.parallel:  # the next step waits for them all
                return ends
            self._connect(ends, node)
            if item.endless:
                return broken
            return self._items(item.orelse, [_Exit(node, "done")]) + broken
        # A failure can come from any step tried: the handlers leave the box as a whole.
        box = self._id("try")
        self._nodes.append(f'    subgraph {box} ["try"]')
        ends = self._items(item.body, entry)
        self._nodes.append("    end")
        for on, body in item.handlers:
            ends += self._items(body, [_Exit(box, on, dotted=True)])
        return ends


def _shape(step: Step) -> str:
    label = {"sleep": f"sleep: {step.name} ({step.detail})",
             "sleep_until": f"sleep until: {step.name} ({step.detail})",
             "wait_for_event": f"wait for event: {step.name} ({step.detail})"
             }.get(step.kind, step.name)
    if step.rollback:
        label += " ↩ rollback"
    text = _quote(label)
    if step.kind == "wait_for_event":
        return f'[/"{text}"/]'
    if step.kind in ("sleep", "sleep_until"):
        return f'(["{text}"])'
    return f'["{text}"]'


_ENTITIES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "`": "#96;",
             "\r": " ", "\n": " "}


def _quote(text: str) -> str:
    """Text for inside a Mermaid label's quotes, shown as written: ``#`` starts an entity,
    ``<``/``>`` would be HTML and backticks Markdown, so they are entities themselves."""
    return "".join(_ENTITIES.get(ch, ch) for ch in text)
