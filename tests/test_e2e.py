"""End to end, for real (scripts/e2e.py): one Prefect server with prefect.yaml deployed and one
process worker for the whole module; each test is one of the harness's checks. A new check goes
into the harness's CHECKS, and here as one more `@pytest.mark.slow` test taking `stack`."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from scripts import e2e

from .conftest import ROOT


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One server with prefect.yaml deployed and one worker for every test here."""
    with e2e.Stack(tmp_path_factory.mktemp("e2e")) as stack:
        stack.start()
        started = dict(stack.processes)
        yield stack
    for name, proc in started.items():  # torn down: no process of either group is left
        assert proc.poll() is not None, f"the {name} still runs"
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)


def require_chromium() -> None:
    """Skip without chromium, or fail when the run requires services (`.ci/run` installs it)."""
    if e2e.find_chromium() is None:
        reason = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("OPSFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (OPSFLOW_REQUIRE_SERVICES=1, so this fails instead of skipping)")
        pytest.skip(reason)


# ---- pure parts of the harness


@pytest.mark.parametrize(
    ("cron", "when", "fires"),
    [
        ("*/5 * * * *", datetime(2026, 1, 1, 10, 35), True),
        ("*/5 * * * *", datetime(2026, 1, 1, 10, 36), False),
        ("0 3 * * 0", datetime(2026, 3, 29, 3, 0), True),  # a Sunday
        ("0 3 * * 7", datetime(2026, 3, 29, 3, 0), True),
        ("0 3 * * 0", datetime(2026, 3, 30, 3, 0), False),
        ("30 4 * * 1-6", datetime(2026, 3, 30, 4, 30), True),  # Monday
        ("30 4 * * 1-6", datetime(2026, 3, 29, 4, 30), False),
        ("0 1,13 * * *", datetime(2026, 3, 29, 13, 0), True),
        ("0 0 1 * 1", datetime(2026, 3, 30, 0, 0), True),  # day of month or day of week
        ("0 0 1 * 1", datetime(2026, 3, 31, 0, 0), False),
    ],
)
def test_cron_matches(cron, when, fires):
    assert e2e.cron_matches(cron, when) is fires


def test_cron_times_in_a_timezone():
    first, last = datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC)
    paris = e2e.cron_times("0 4 * * *", ZoneInfo("Europe/Paris"), first, last)
    assert [t.hour for t in paris] == [3, 2, 2]  # 04:00 in Paris: winter, then summer time


def test_missing_chromium_fails_when_services_are_required(monkeypatch):
    monkeypatch.setattr(e2e, "find_chromium", lambda: None)
    monkeypatch.setenv("OPSFLOW_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="OPSFLOW_REQUIRE_SERVICES=1"):
        require_chromium()
    monkeypatch.delenv("OPSFLOW_REQUIRE_SERVICES")
    with pytest.raises(pytest.skip.Exception):
        require_chromium()


def test_harness_help_lists_its_checks():
    done = subprocess.run(
        [sys.executable, "scripts/e2e.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert all(c.__name__.removeprefix("check_") in done.stdout for c in e2e.CHECKS)


# ---- against the stack


@pytest.mark.slow
def test_every_deployment_of_prefect_yaml_is_on_the_server(stack):
    e2e.check_deployments(stack)


@pytest.mark.slow
def test_cron_schedules_make_runs_at_their_cron_times(stack):
    e2e.check_cron_schedules(stack)


@pytest.mark.slow
def test_ci_trigger_exits_0_when_the_run_completes(stack):
    e2e.check_trigger_completes(stack)


@pytest.mark.slow
def test_ci_trigger_exits_1_when_the_run_fails(stack):
    e2e.check_trigger_fails(stack)


@pytest.mark.slow
def test_ui_shows_the_flow_run(stack, tmp_path):
    require_chromium()
    e2e.check_ui_shows_run(stack, out=tmp_path)
    assert list(tmp_path.glob("flow-run-*.png"))


@pytest.mark.slow
def test_a_paused_release_goes_live_once_approved_through_the_api(stack):
    require_chromium()
    e2e.check_release_approval(stack)
