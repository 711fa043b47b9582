"""How late delayed messages arrive, and that none arrives early.

Publishes ``--n`` messages on the ``internal`` exchange with delays drawn uniformly from
``0..--max-delay-ms``, consumes them, and prints one JSON line on stdout::

    {"benchmark": "delay_lateness", "n": ..., "early": 0, "lateness_ms": {"p50": ..., ...}}

Lateness is arrival time minus (time just before the publish call + delay), on one monotonic
clock, so it includes publish and delivery latency. Runs in a fresh namespace whose queues and
exchanges are deleted afterwards. Logs go to stderr.

Usage: ``python -m benchmarks.delay_lateness [--n 10000] [--max-delay-ms 10000]
[--broker amqp://guest:guest@127.0.0.1/]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
import uuid

import structlog

from broker import Delivery, OutgoingMessage, broker_from_url

WORKFLOW = "delaybench"
EARLY_TOLERANCE_MS = 1e-3  # float rounding of monotonic timestamps, not real earliness


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def run(n: int, max_delay_ms: int, url: str, batch: int, seed: int) -> dict[str, object]:
    """Publish, consume and measure; returns the result record."""
    namespace = f"bench{uuid.uuid4().hex[:10]}"
    broker = broker_from_url(url, namespace)
    rng = random.Random(seed)
    delays = [rng.randint(0, max_delay_ms) for _ in range(n)]
    due: dict[str, float] = {}
    lateness_ms: list[float] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        arrived = time.monotonic()
        await delivery.ack()
        assert delivery.message_id is not None
        lateness_ms.append((arrived - due[delivery.message_id]) * 1000)
        if len(lateness_ms) == n:
            done.set()

    await broker.connect()
    try:
        await broker.declare_workflow(WORKFLOW)
        consumer = await broker.consume(WORKFLOW, handler, prefetch=1000)
        started = time.monotonic()
        for start in range(0, n, batch):
            chunk = range(start, min(start + batch, n))
            published_at = time.monotonic()
            for i in chunk:
                due[str(i)] = published_at + delays[i] / 1000
            await broker.publish(
                [
                    OutgoingMessage(
                        "internal", WORKFLOW, b"{}", delay_ms=delays[i], message_id=str(i)
                    )
                    for i in chunk
                ]
            )
        publish_s = time.monotonic() - started
        with contextlib.suppress(TimeoutError):  # reported as received < n
            await asyncio.wait_for(done.wait(), timeout=max_delay_ms / 1000 + publish_s + 120)
        await consumer.cancel()
    finally:
        delete = getattr(broker, "delete_topology", None)
        if delete is not None:
            await delete([WORKFLOW])
        await broker.close()

    ordered = sorted(lateness_ms)
    return {
        "benchmark": "delay_lateness",
        "broker": type(broker).__name__,
        "n": n,
        "max_delay_ms": max_delay_ms,
        "received": len(ordered),
        "early": sum(1 for late in ordered if late < -EARLY_TOLERANCE_MS),
        "publish_per_s": round(n / publish_s, 1) if publish_s else None,
        "lateness_ms": {
            "p50": round(_percentile(ordered, 50), 2) if ordered else None,
            "p99": round(_percentile(ordered, 99), 2) if ordered else None,
            "max": round(ordered[-1], 2) if ordered else None,
            "min": round(ordered[0], 2) if ordered else None,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delay_lateness")
    parser.add_argument("--n", type=int, default=10_000, help="messages to publish")
    parser.add_argument("--max-delay-ms", type=int, default=10_000, help="largest random delay")
    parser.add_argument(
        "--broker",
        default=os.environ.get("WARREN_BROKER_URL", "amqp://guest:guest@127.0.0.1/"),
        help="broker URL (amqp://... or memory://)",
    )
    parser.add_argument("--batch", type=int, default=200, help="messages per publish call")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    # Keep stdout for the single JSON result line.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    result = asyncio.run(run(args.n, args.max_delay_ms, args.broker, args.batch, args.seed))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
