"""Shared fixtures: one Prefect test server for the whole session, started only when needed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLES = ROOT / "deployments" / "workflows"

# Keep test runs away from a developer's own server and from starting one in the background.
os.environ["OPSFLOW_SERVER"] = "reuse"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.pop("PREFECT_API_URL", None)
# Records (and anything else opsflow keeps in its home) go to a throwaway directory.
os.environ["OPSFLOW_HOME"] = tempfile.mkdtemp(prefix="opsflow-test-home-")
os.environ.pop("OPSFLOW_DATABASE_URL", None)
os.environ.pop("OPSFLOW_LOG_AGGREGATION_DIR", None)  # a developer's own would leak into tests


@pytest.fixture(scope="session")
def prefect_api():
    """A Prefect server for the session (`prefect_test_harness`); its URL is exported so the
    command line and its subprocesses use the same server."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def mark_health_check(seed_text: str) -> str:
    """seed 001's advanced deployment with its green test marked as the health check (the seed's
    `rollback.conditions: [health_check_failed]` names no such step, so it is refused as written)."""
    step = '      - name: "test_green_environment"\n'
    assert step in seed_text
    return seed_text.replace(step, step + "        health_check: true\n")


@pytest.fixture
def write_workflow(tmp_path):
    """Write a workflow file from YAML text and return its path."""

    def write(text: str, name: str = "wf.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(autouse=True)
def _keep_prefect_log_level():
    """The command line sets PREFECT_LOGGING_LEVEL for `-q`/`-v` in its own process; tests that
    call it in-process must not leave that to later tests (and the workers they start)."""
    before = os.environ.get("PREFECT_LOGGING_LEVEL")
    yield
    if before is None:
        os.environ.pop("PREFECT_LOGGING_LEVEL", None)
    else:
        os.environ["PREFECT_LOGGING_LEVEL"] = before
