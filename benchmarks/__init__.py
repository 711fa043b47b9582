"""Reproducible benchmarks of Warren and of the engines people would pick instead.

Run ``python -m benchmarks --help``. Every scenario prints one JSON line per engine on
stdout (and, with ``--compare``, a last line of Warren/peer ratios); progress and worker
logs go to stderr, so stdout can be piped straight into a file or ``jq``. See
``benchmarks/README.md`` for what each scenario measures and how each peer is configured.
"""
