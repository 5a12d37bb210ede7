"""Every sample workflow runs green with its defaults; the failure demos fail the way they say."""

from __future__ import annotations

import pytest

from .conftest import SAMPLES

pytestmark = pytest.mark.usefixtures("prefect_api")


def run_sample(name, tmp_path, environment=None, **sets):
    from flows.workflow.run import run_workflow

    parameters = {"workdir": str(tmp_path / name), **sets}
    state = run_workflow(
        path=str(SAMPLES / f"{name}.yaml"), parameters=parameters, environment=environment, return_state=True
    )
    return state, state.result(raise_on_failure=False)


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_sample_runs_green(path, tmp_path):
    state, summary = run_sample(path.stem, tmp_path)
    assert state.is_completed(), summary
    assert summary["exit_code"] == 0


@pytest.mark.parametrize(
    ("environment", "ran", "skipped"),
    [("staging", "seed_sample_data", "security_scan"), ("production", "security_scan", "seed_sample_data")],
)
def test_environment_specific_per_environment(tmp_path, environment, ran, skipped):
    state, summary = run_sample("environment-specific", tmp_path, environment=environment)
    assert state.is_completed(), summary
    by_step = {s["step"]: s["state"] for s in summary["steps"]}
    assert by_step[ran] == "Completed" and by_step[skipped] == "Skipped"


def test_error_handling_failure_demo_runs_its_hooks(tmp_path):
    state, summary = run_sample("error-handling", tmp_path, fail_deploy="true")
    assert state.is_failed()
    by_step = {s["step"]: s for s in summary["steps"]}
    assert by_step["deploy_release"]["state"] == "Failed" and by_step["deploy_release"]["attempts"] == 3
    assert by_step["automatic_rollback"]["state"] == "Completed"
    assert by_step["collect_diagnostics"]["section"] == "recovery"  # recovery strategy deploy_recovery
    assert by_step["collect_diagnostics"]["state"] == "Completed"
    assert (tmp_path / "error-handling" / "recovery-report.txt").exists()


def test_best_practice_compensates_newest_first(tmp_path):
    state, summary = run_sample(
        "best-practice-example", tmp_path, environment="staging", fail_smoke_test="true"
    )
    assert state.is_failed()
    compensations = [s["step"] for s in summary["steps"] if s["section"].endswith(".compensate")]
    assert compensations == ["switch_back", "restore_config", "remove_staged_release"], compensations


def test_advanced_deployment_rolls_back_only_when_its_health_check_fails(tmp_path):
    # the slot test is marked `health_check: true`: its failure is the rollback's condition
    state, summary = run_sample("advanced-deployment", tmp_path, fail_tests="true")
    assert state.is_failed()
    by_step = {(s["section"], s["step"]): s["state"] for s in summary["steps"]}
    assert by_step[("steps", "test_idle_slot")] == "Failed"
    assert by_step[("rollback", "traffic_rollback")] == "Completed"
    assert by_step[("rollback", "service_rollback")] == "Completed"

    # a failure that is none of its conditions (the state directory cannot be made: its parent
    # is a file) fails the run without a rollback
    (tmp_path / "not-a-dir").write_text("")
    state, summary = run_sample("advanced-deployment", tmp_path / "not-a-dir")
    by_step = {(s["section"], s["step"]): s["state"] for s in summary["steps"]}
    assert state.is_failed() and by_step[("steps", "find_idle_slot")] == "Failed", by_step
    assert not [key for key in by_step if key[0] == "rollback"], by_step
