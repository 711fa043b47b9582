"""Finds the workflows to serve in modules named on the command line."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

from sdk._workflow import WorkflowEntrypoint
from sdk.errors import ValidationError


def load_module(spec: str) -> ModuleType:
    """Import ``spec``: a dotted module name or a path to a ``.py`` file.

    Raises:
        ValidationError: It cannot be found or its code fails while importing; the message
            is one line naming the module, the error and where it was raised.
    """
    try:
        return _import(spec)
    except _NotFound:
        raise
    except Exception as exc:  # a ValidationError too: the sdk refusing a workflow class
        # The innermost line of the user's code, not of Warren's or of the import machinery
        # (a SyntaxError names its own line).
        theirs = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not f.filename.startswith(_MACHINERY)]
        where = "" if isinstance(exc, SyntaxError) or not theirs else (
            f" at {theirs[-1].filename}:{theirs[-1].lineno}")
        raise ValidationError(
            f"cannot load workflows from {spec}: {type(exc).__name__}: {exc}{where}") from exc


# Warren's three packages sit side by side (engine/_loader.py is this file).
_MACHINERY = ("<", str(Path(importlib.__file__).parent),
              *(str(Path(__file__).parents[1] / name) for name in ("sdk", "engine", "broker")))


class _NotFound(ValidationError):
    """``spec`` names no file that can be imported (said as is, not as a failed import)."""


def _import(spec: str) -> ModuleType:
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec).resolve()
        if not path.is_file():
            raise _NotFound(f"no such file: {spec}")
        name = f"warren_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise _NotFound(f"cannot import {spec}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent))
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def workflows_in(modules: Iterable[ModuleType]) -> list[type[WorkflowEntrypoint]]:
    """Every concrete ``WorkflowEntrypoint`` subclass defined in ``modules``."""
    found: dict[str, type[WorkflowEntrypoint]] = {}
    for module in modules:
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (issubclass(obj, WorkflowEntrypoint) and obj is not WorkflowEntrypoint
                    and not inspect.isabstract(obj) and obj.__module__ == module.__name__):
                found[obj.name] = obj
    return list(found.values())


def select_workflows(
    modules: Sequence[str], names: Iterable[str] = ()
) -> list[type[WorkflowEntrypoint]]:
    """The workflows defined in ``modules`` (files or dotted names), optionally only ``names``.

    Raises:
        ValidationError: a module cannot be found, a named workflow is missing, or none found.
    """
    found = workflows_in(load_module(m) for m in modules)
    wanted = {n.strip() for n in names if n.strip()}
    if wanted:
        missing = wanted - {w.name for w in found}
        if missing:
            raise ValidationError(
                f"no workflow named {', '.join(sorted(missing))} in {' '.join(modules)}"
            )
        found = [w for w in found if w.name in wanted]
    if not found:
        raise ValidationError(f"no WorkflowEntrypoint subclass found in {' '.join(modules)}")
    return found
