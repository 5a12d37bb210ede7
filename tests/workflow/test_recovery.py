"""`recovery.strategies`: refused with file:line when they cannot be mapped; real runs otherwise."""

from __future__ import annotations

import json

import pytest

from flows.batch import main

from ..conftest import FIXTURES, SAMPLES, mark_health_check

RECOVERY_STEPS = """
  steps:
    - name: restart_service
      command: echo restarted >> {log}
"""


def validate(path) -> int:
    with pytest.raises(SystemExit) as info:
        main(["validate", str(path)])
    return info.value.code


def workflow(log, strategies: str, extra: str = "") -> str:
    return f"""name: recovering
steps:
  - name: deploy
    command: "true"
  - name: api_health
    health_check: true
    command: "true"
{extra}recovery:
  strategies:
{strategies}{RECOVERY_STEPS.format(log=log)}"""


@pytest.mark.parametrize(
    ("strategy", "line", "message"),
    [
        (
            '    - name: s\n      conditions: ["service_down"]\n      actions: [restart_service]\n',
            11,
            "recovery condition `service_down` is not one the engine can detect",
        ),
        (
            '    - name: s\n      conditions: ["step_failed"]\n      actions:\n        - restart_servce\n',
            13,
            "did you mean `restart_service`",
        ),
        (
            '    - name: s\n      conditions: ["step_failed:deploy_db"]\n      actions: [restart_service]\n',
            11,
            "names `deploy_db`, which is not a step",
        ),
        (
            '    - name: s\n      conditions: ["step_timed_out"]\n      actions: [rollback]\n',
            12,
            "action `rollback` needs an enabled `rollback` section",
        ),
    ],
    ids=["unknown condition", "unknown action", "missing step", "rollback without section"],
)
def test_unmappable_strategies_are_validation_errors(
    write_workflow, tmp_path, capsys, strategy, line, message
):
    path = write_workflow(workflow(tmp_path / "log", strategy))
    assert validate(path) == 3
    err = capsys.readouterr().err
    assert f"{path}:{line}: " in err and message in err, err


def test_health_check_failed_needs_a_health_check_step(write_workflow, tmp_path, capsys):
    text = workflow(
        tmp_path / "log",
        "    - name: s\n      conditions: [health_check_failed]\n      actions: [restart_service]\n",
    ).replace("    health_check: true\n", "")
    path = write_workflow(text)
    assert validate(path) == 3
    assert "mark the step that checks health with `health_check: true`" in capsys.readouterr().err
    # A step's name does not make it a health check; the marker (or monitoring.health_checks) does.
    path.write_text(text + "monitoring:\n  health_checks: true\n")
    assert validate(path) == 0


def test_recovery_step_may_not_hide_a_builtin(write_workflow, tmp_path, capsys):
    text = workflow(
        tmp_path / "log", "    - name: s\n      conditions: [step_failed]\n      actions: [notify]\n"
    )
    path = write_workflow(text.replace("name: restart_service", "name: notify"))
    assert validate(path) == 3
    assert (
        f"{path}:15: a step of `recovery.steps` needs a name other than a built-in" in capsys.readouterr().err
    )


def test_seed_recovery_example_is_refused_where_it_cannot_be_mapped(capsys):
    # seed 001 writes `service_down`, `data_corruption`, `backup_needed` and actions such as
    # `restart_service` that nothing in the file defines: no honest mapping exists.
    path = FIXTURES / "seed001" / "error-handling.yaml"
    assert validate(path) == 3
    assert f"{path}:37: recovery condition `service_down`" in capsys.readouterr().err


def test_seed_rollback_example_is_refused_until_it_names_its_health_check(tmp_path, capsys):
    # seed 001's advanced deployment rolls back on `health_check_failed` but marks no step as
    # the health check; marking the green environment's test makes it valid as written.
    path = FIXTURES / "seed001" / "advanced-deployment.yaml"
    assert validate(path) == 3
    assert f"{path}:67: condition `health_check_failed` needs a health check" in capsys.readouterr().err
    marked = tmp_path / "advanced-deployment.yaml"
    marked.write_text(mark_health_check(path.read_text()))
    assert validate(marked) == 0


def test_rollback_conditions_are_validated(write_workflow, tmp_path, capsys):
    base = "name: r\nsteps:\n  - name: a\n    command: 'true'\nrollback:\n  conditions: [{c}]\n  steps:\n    - command: 'true'\n"
    for condition, message in [
        ("prerequisite_failed", "rollback condition `prerequisite_failed` cannot trigger a rollback"),
        ("deploy_timeout", "did you mean `deployment_timeout`"),
        ("step_failed:b", "names `b`, which is not a step"),
    ]:
        path = write_workflow(base.format(c=condition))
        assert validate(path) == 3
        assert f"{path}:6: " in (err := capsys.readouterr().err) and message in err, err
    path = write_workflow(
        base.format(c="deployment_timeout").replace("rollback:\n", "rollback:\n  automatic: false\n")
    )
    assert validate(path) == 0
    assert "`rollback.conditions` have no effect: the rollback is not automatic" in capsys.readouterr().err


def test_samples_with_recovery_validate(capsys):
    assert validate(SAMPLES / "error-handling.yaml") == 0


# -- real runs ----------------------------------------------------------------------------


def run(path):
    from flows.workflow.run import run_workflow

    state = run_workflow(path=str(path), return_state=True)
    return state, state.result(raise_on_failure=False)


@pytest.mark.usefixtures("prefect_api")
def test_failed_step_runs_recovery_step_then_rollback(write_workflow, tmp_path):
    log = tmp_path / "log"
    path = write_workflow(f"""name: recovering
steps:
  - name: deploy
    command: exit 4
rollback:
  automatic: false
  steps:
    - name: switch_back
      command: echo rolled back >> {log}
recovery:
  strategies:
    - name: after_deploy
      conditions: ["step_failed:deploy"]
      actions: [restart_service, rollback]
    - name: timeouts
      conditions: [step_timed_out]
      actions: [restart_service]
{RECOVERY_STEPS.format(log=log)}""")
    state, summary = run(path)
    assert state.is_failed()
    assert log.read_text().splitlines() == ["restarted", "rolled back"]
    sections = [(s["section"], s["step"], s["state"]) for s in summary["steps"] if s["section"] != "steps"]
    assert sections == [
        ("recovery", "restart_service", "Completed"),
        ("rollback", "switch_back", "Completed"),
    ]
    assert summary["recovery"] == [
        {
            "strategy": "after_deploy",
            "conditions": ["step_failed:deploy"],
            "actions": [
                {"action": "restart_service", "result": "Completed"},
                {"action": "rollback", "result": "Completed"},
            ],
        }
    ]


@pytest.mark.usefixtures("prefect_api")
def test_timed_out_step_triggers_its_strategy_and_success_triggers_nothing(write_workflow, tmp_path):
    log = tmp_path / "log"
    text = f"""name: recovering
parameters:
  - name: nap
    default: "5"
steps:
  - name: api_health
    health_check: true
    timeout: 0.5s
    command: sleep {{{{ .nap }}}}
recovery:
  strategies:
    - name: failed
      conditions: [step_failed]
      actions: [note_failure]
    - name: slow
      conditions: ["step_timed_out:api_health", health_check_failed]
      actions: [restart_service]
  steps:
    - name: note_failure
      command: echo failed >> {log}
    - name: restart_service
      command: echo restarted >> {log}
"""
    path = write_workflow(text)
    state, summary = run(path)
    assert state.is_failed()
    assert log.read_text().splitlines() == ["failed", "restarted"]
    assert [r["strategy"] for r in summary["recovery"]] == ["failed", "slow"]
    assert summary["recovery"][1]["conditions"] == ["step_timed_out:api_health", "health_check_failed"]

    log.unlink()
    path.write_text(text.replace('default: "5"', 'default: "0"'))
    state, summary = run(path)
    assert state.is_completed(), summary
    assert not log.exists()
    assert "recovery" not in summary
    assert all(s["section"] == "steps" for s in summary["steps"])


@pytest.mark.usefixtures("prefect_api")
def test_failed_prerequisite_notifies_the_channels(write_workflow, monkeypatch):
    from tests.receivers import Receiver

    hook = Receiver()
    monkeypatch.setenv("OPSFLOW_NOTIFY_HOOK", hook.url)
    path = write_workflow("""name: recovering
prerequisites:
  - name: tool
    command: exit 1
steps:
  - name: deploy
    command: "true"
notifications:
  channels: [hook]
recovery:
  strategies:
    - name: tell_someone
      conditions: ["prerequisite_failed:tool"]
      actions: [notify]
""")
    try:
        state, summary = run(path)
    finally:
        hook.close()
    assert state.is_failed() and summary["exit_code"] == 2
    assert summary["recovery"][0]["actions"] == [{"action": "notify", "result": "sent"}]
    posts = [json.loads(body) for body in hook.bodies]
    assert [p["title"] for p in posts] == ["opsflow: recovering recovery (development)"]
    assert "failed steps: tool" in posts[0]["message"]


def test_health_check_mark_on_a_hook_is_refused(write_workflow, capsys):
    path = write_workflow(
        "name: r\nsteps:\n  - command: 'true'\nrollback:\n  steps:\n    - name: undo\n"
        "      health_check: true\n      command: 'true'\n"
    )
    assert validate(path) == 3
    assert f"{path}:7: `health_check: true` on `undo` has no effect" in capsys.readouterr().err
