"""Warren's engine: stateless workers that advance workflow instances.

:class:`Worker` serves workflows; :class:`Settings` configures it (also from ``WARREN_*``
environment variables); :func:`replay` is the storage-free executor, exposed for tests
and tools.
"""

from engine._settings import Settings
from engine._worker import Worker

__all__ = ["Settings", "Worker"]
