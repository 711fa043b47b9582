"""The garbage collector of a process that Warren's CLI owns (``warren worker``, ``warren dev``).

A worker allocates and frees objects by the million (rows, messages, the suspended runs of
its instances), almost all freed by reference counting. With CPython's defaults the cyclic
collector still ran about once per 17 steps, and each full collection walked everything the
imports had left behind (SQLAlchemy, asyncpg, aio-pika: 60-100 ms per pass, a pause in
which the worker neither turns nor settles): one worker running 18,000 steps spent 0.8-1.0 s
in it, a fifth of its CPU. Frozen start-up objects are never walked again, and a young
generation of 10,000 is rarely filled by what lives past reference counting: the same run
spent 24-26 ms.

The price: a frozen object that later becomes cyclic garbage is never freed (a start-up
connection replaced after a reconnect, or a turn's object if the first messages arrived
before the freeze), and cyclic garbage waits longer: the worker's resident memory at the
peak of ``sleepers`` grew by about 5 MB (157 -> 162 MB).

A library must not change the collector of the application that embeds it, so only the CLI's
own processes call this; an application serving :class:`engine.Worker` itself can do the same.
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 10_000


def tune_gc_for_serving() -> None:
    """Freeze what start-up allocated and collect the young generation less often.

    Call it once, after start-up: imports done, connections open, workflows loaded.
    """
    gc.collect()  # what start-up left as garbage is freed, not frozen with the rest
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)
