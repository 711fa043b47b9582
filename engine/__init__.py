"""Warren's engine: stateless workers that advance workflow instances.

:class:`Worker` serves workflows; :class:`Settings` configures it (also from ``WARREN_*``
environment variables). Both are imported on first use, so that ``warren`` commands which
only talk HTTP start without loading the database and broker stacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine._settings import Settings
    from engine._worker import Worker

__all__ = ["Settings", "Worker"]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from engine._worker import Worker

        return Worker
    if name == "Settings":
        from engine._settings import Settings

        return Settings
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
