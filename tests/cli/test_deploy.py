"""deploy/ stays consistent with the code (Docker cannot run here, so check what we can)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = [REPO / "deploy" / "docker-compose.yml", REPO / "deploy" / "Dockerfile"]


def _source() -> str:
    return "\n".join(
        p.read_text() for d in ("engine", "sdk", "broker") for p in (REPO / d).rglob("*.py")
    )


def test_every_variable_deploy_sets_is_read_by_the_code() -> None:
    source = _source()
    named = {v for f in DEPLOY for v in re.findall(r"\bWARREN_[A-Z_]+\b", f.read_text())}
    assert {"WARREN_BROKER_URL", "WARREN_DATABASE_URL", "WARREN_API_TOKEN"} <= named
    unknown = sorted(v for v in named if f'"{v}"' not in source)
    assert not unknown, f"deploy/ sets variables no code reads: {unknown}"


def test_compose_serves_existing_example_files_with_warren_commands() -> None:
    compose = (REPO / "deploy" / "docker-compose.yml").read_text()
    files = set(re.findall(r"examples/\w+\.py", compose))
    assert "examples/order_processing.py" in files
    assert all((REPO / f).is_file() for f in files), files
    for service in ("rabbitmq:", "postgres:", "worker:", "api:"):
        assert f"\n  {service}" in compose
    assert "- worker" in compose and '"warren", "api"' in compose
    assert "postgresql+asyncpg://" in compose and "amqp://" in compose
