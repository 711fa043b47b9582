"""The ``warren`` command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog

from engine._loader import load_module, workflows_in
from engine._logging import configure_logging
from engine._worker import Worker
from sdk.errors import WarrenError

log = structlog.get_logger("warren.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warren", description="Durable workflows on RabbitMQ and SQL.")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="serve the workflows defined in MODULEs")
    worker.add_argument("modules", nargs="+", metavar="MODULE",
                        help="dotted module name or path to a .py file")
    worker.add_argument("--concurrency", type=int, default=None,
                        help="step bodies in flight (default 100, env WARREN_CONCURRENCY)")
    worker.add_argument("--workflows", default=None,
                        help="comma-separated names: serve only these")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    workflows = workflows_in(load_module(m) for m in args.modules)
    if args.workflows:
        wanted = {w.strip() for w in args.workflows.split(",") if w.strip()}
        missing = wanted - {w.name for w in workflows}
        if missing:
            raise WarrenError(f"no workflow named {', '.join(sorted(missing))} in {args.modules}")
        workflows = [w for w in workflows if w.name in wanted]
    if not workflows:
        raise WarrenError(f"no WorkflowEntrypoint subclass found in {' '.join(args.modules)}")
    worker = Worker(workflows, concurrency=args.concurrency)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop()))
    await worker.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``warren`` console script."""
    args = _parser().parse_args(argv)
    configure_logging()
    try:
        if args.command == "worker":
            asyncio.run(_serve(args))
    except (WarrenError, ValueError, OSError) as exc:
        print(f"warren: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's one-line error
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
