"""bench/scale_out.py at a small size: a Prefect server on PostgreSQL, two workers on one pool,
runs triggered at once, each completed exactly once, and nothing left running afterwards."""

from __future__ import annotations

import os

import psycopg
import pytest

from bench.scale_out import scale_out
from tests.maintenance.conftest import pg_admin_url  # noqa: F401 - the fixture

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_runs_triggered_at_once_run_exactly_once_on_both_workers(pg_admin_url):  # noqa: F811
    result = scale_out(runs=6, workers=2, limit=3, admin_url=pg_admin_url, timeout=150)

    assert result.ok, result.problems
    assert result.states == {"Completed": 6}
    assert result.marks == 6 and not result.duplicated and not result.lost and not result.unknown
    # Reliable at 6 runs: a worker holds at most --limit 3 at once, so 3 runs wait while the other
    # worker (online before the trigger) polls every 2 s, far within one run's ~10 s start-up.
    assert len(result.split) == 2 and all(n >= 1 for n in result.split.values()), result.split
    assert sum(result.split.values()) == 6
    assert result.wall_seconds > 0 and result.server_cpu_seconds > 0

    # The teardown: every process group gone, both scratch databases dropped.
    for pid in result.started:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    with psycopg.connect(pg_admin_url) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (result.databases,)
        ).fetchall()
    assert len(result.databases) == 2 and not left
