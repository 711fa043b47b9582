"""Peer engines run on the same services and workloads as Warren: DBOS Transact and Celery.

Both are optional (``pip install -e '.[bench]'``); nothing here is imported unless a peer
is asked for. How each is configured, and why, is in ``benchmarks/README.md``.
"""
