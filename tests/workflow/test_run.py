"""The Prefect flow, against a real Prefect test server and real commands."""

from __future__ import annotations

import time

import pytest

from flows.errors import DependencyError
from tests.files.conftest_helpers import wait_for

pytestmark = pytest.mark.usefixtures("prefect_api")


def run(path, **kwargs):
    from flows.workflow.run import run_workflow

    state = run_workflow(path=str(path), **kwargs, return_state=True)
    value = state.result(raise_on_failure=False)
    return state, value


def states(summary):
    return {s["step"]: s["state"] for s in summary["steps"]}


def meeting(stamps, name: str, expected: int, then: str = "true") -> str:
    """A command that records its start, waits (at most 60 s) until `expected` commands have
    started, runs `then` and records its end: commands that run at the same time overlap for
    certain, and commands run one after another show as a start followed by its end."""
    return (
        f"echo start {name} >> {stamps}; i=0; "
        f"while [ $(grep -c '^start' {stamps}) -lt {expected} ] && [ $i -lt 600 ]; "
        f"do sleep 0.1; i=$((i+1)); done; {then}; echo end {name} >> {stamps}"
    )


def gone(pid_file) -> bool:
    """Nothing of the process group led by the pid in `pid_file` is running."""
    from flows.processes import group_alive

    return not group_alive(int(pid_file.read_text()), None)


def test_order_capture_conditions_and_quoting(write_workflow, tmp_path):
    log = tmp_path / "log"
    pwned = tmp_path / "pwned"
    path = write_workflow(f"""
name: semantics
parameters:
  - name: who
    default: "x; touch {pwned}"
  - name: services
    type: list
    default: [api, "a b"]
steps:
  - name: status
    command: |
      echo '[{{"name": "api", "health_score": 70}}]'
    capture_output: status_check
  - name: deploy_if_unhealthy
    condition: |
      {{{{- $status := .outputs.status_check | fromJSON -}}}}
      {{{{- range $status -}}}}
        {{{{- if and (eq .name "api") (lt .health_score 80) -}}}}
          true
        {{{{- end -}}}}
      {{{{- end -}}}}
    steps:
      - command: echo deployed {{{{ .who }}}} >> {log}
  - name: prod_only
    when: "{{{{ .environment == 'production' }}}}"
    steps:
      - command: echo prod >> {log}
  - name: after_skip
    command: for s in {{{{ .services }}}}; do echo "svc=$s" >> {log}; done
""")
    state, summary = run(path)
    assert state.is_completed(), summary
    assert log.read_text().splitlines() == [f"deployed x; touch {pwned}", "svc=api", "svc=a b"]
    assert not pwned.exists()
    got = states(summary)
    assert got["prod_only.1"] == "Skipped"
    assert got["after_skip"] == "Completed"


def test_parallel_group_respects_limit_and_depends(write_workflow, tmp_path):
    stamps = tmp_path / "stamps"
    # Each step waits for a second one to have started, then stays a moment: with a limit of 2,
    # two run together, never three.
    steps = "\n".join(
        f"      - name: s{i}\n        command: {meeting(stamps, f's{i}', 2, then='sleep 0.4')}"
        for i in range(4)
    )
    path = write_workflow(
        f"name: par\nsteps:\n  - name: g\n    parallel: true\n    parallel_limit: 2\n    steps:\n{steps}\n"
        f"      - name: last\n        command: echo last >> {stamps}\n        depends_on: [s0, s1, s2, s3]\n"
    )
    state, summary = run(path)
    assert state.is_completed(), summary
    events = [line.split() for line in stamps.read_text().splitlines()]
    running, peak = 0, 0
    for event in events[:-1]:
        running += 1 if event[0] == "start" else -1
        peak = max(peak, running)
    assert peak == 2
    assert events[-1] == ["last"]


def test_timeout_kills_and_fails(write_workflow, tmp_path):
    pid, finished = tmp_path / "pid", tmp_path / "finished"
    path = write_workflow(
        f"name: t\nsteps:\n  - name: slow\n    command: echo $$ > {pid}; sleep 30; touch {finished}\n"
        "    timeout: 2s\n  - command: 'true'\n"
    )
    state, summary = run(path)
    assert state.is_failed()
    assert states(summary) == {"slow": "TimedOut", "step2": "NotRun"}
    assert "timed out after 2.0s" in summary["steps"][0]["reason"]
    assert summary["exit_code"] == 1
    wait_for(lambda: gone(pid), 60)  # killed, `sleep` and all
    assert not finished.exists()


def test_retry_with_on_retry_hooks(write_workflow, tmp_path):
    counter = tmp_path / "count"
    retries = tmp_path / "retries"
    path = write_workflow(f"""
name: r
steps:
  - name: flaky
    command: echo x >> {counter}; test $(wc -l < {counter}) -ge 3
    retry: {{attempts: 3, delay: 0.1, backoff: exponential}}
    on_retry:
      - command: echo retry >> {retries}
""")
    state, summary = run(path)
    assert state.is_completed(), summary
    flaky = next(s for s in summary["steps"] if s["step"] == "flaky")
    assert flaky["attempts"] == 3
    assert retries.read_text().count("retry") == 2


def test_failure_hooks_rollback_and_post_execution(write_workflow, tmp_path):
    log = tmp_path / "log"
    path = write_workflow(f"""
name: f
rollback:
  steps:
    - command: echo rollback >> {log}
on_failure:
  - command: echo wf-failure >> {log}
on_success:
  - command: echo wf-success >> {log}
post_execution:
  failure:
    - command: echo post-failure {{{{ .workflow_id }}}} >> {log}
steps:
  - name: tx
    atomic: true
    steps:
      - name: a
        command: echo a >> {log}
        compensate: echo undo-a >> {log}
      - name: b
        command: echo b >> {log}
        compensate: echo undo-b >> {log}
      - name: c
        command: exit 7
        on_failure:
          - command: echo c-failed >> {log}
""")
    state, summary = run(path)
    assert state.is_failed()
    lines = log.read_text().splitlines()
    assert lines[:6] == ["a", "b", "c-failed", "undo-b", "undo-a", "rollback"]
    assert lines[6] == "wf-failure"
    assert lines[7].startswith("post-failure ") and lines[7] != "post-failure "
    c = next(s for s in summary["steps"] if s["step"] == "c")
    assert c["exit_code"] == 7


def test_continue_on_error(write_workflow, tmp_path):
    path = write_workflow("""
name: c
steps:
  - name: g
    parallel: true
    steps:
      - name: bad
        command: exit 1
      - name: dependent
        command: 'true'
        depends_on: [bad]
      - name: independent
        command: sleep 0.2
""")
    _, fast = run(path)
    assert states(fast)["independent"] in ("Completed", "NotRun")
    state, summary = run(path, continue_on_error=True)
    assert state.is_failed()
    got = states(summary)
    assert got["independent"] == "Completed" and got["dependent"] == "NotRun" and got["bad"] == "Failed"


def test_prerequisite_failure_is_a_dependency_error(write_workflow):
    path = write_workflow("""
name: p
prerequisites:
  - name: tool_present
    command: command -v no-such-tool-here
steps:
  - command: 'true'
""")
    state, summary = run(path)
    assert state.is_failed()
    assert summary["exit_code"] == DependencyError.exit_code == 2
    assert "prerequisite `tool_present` failed" in summary["message"]
    assert states(summary) == {"tool_present": "Failed"}  # no step ran


def test_workflow_timeout(write_workflow, tmp_path):
    pid, finished = tmp_path / "pid", tmp_path / "finished"
    path = write_workflow(
        f"name: wt\nsteps:\n  - command: echo $$ > {pid}; sleep 20; touch {finished}\n  - command: 'true'\n"
    )
    state, summary = run(path, timeout="2s")
    assert state.is_failed()
    assert states(summary)["step1"] == "TimedOut"
    assert states(summary)["step2"] == "NotRun"
    wait_for(lambda: gone(pid), 60)
    assert not finished.exists()


def test_summary_artifact_is_attached(write_workflow):
    from prefect import get_client

    path = write_workflow("name: art-test\nsteps:\n  - command: echo hi\n")
    state, _ = run(path)
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["workflow-art-test"]))
        )
    assert any(a.flow_run_id == state.state_details.flow_run_id for a in artifacts)
    assert artifacts[0].type == "table"


def test_priority_and_global_parallel_limit(write_workflow, tmp_path):
    order = tmp_path / "order"
    steps = "\n".join(
        f"      - name: p{p}\n        command: echo p{p} >> {order}\n        priority: {p}" for p in (3, 1, 2)
    )
    path = write_workflow(f"name: prio\nsteps:\n  - name: g\n    parallel: true\n    steps:\n{steps}\n")
    state, _ = run(path, parallel=1)
    assert state.is_completed()
    assert order.read_text().split() == ["p1", "p2", "p3"]


def test_resource_limits_max_parallel_serialises(write_workflow, tmp_path):
    stamps = tmp_path / "stamps"
    steps = "\n".join(
        f"      - name: s{i}\n        command: echo start >> {stamps}; sleep 0.3; echo end >> {stamps}"
        for i in range(3)
    )
    path = write_workflow(
        f"name: mp\nresource_limits:\n  max_parallel: 1\nsteps:\n  - name: g\n    parallel: true\n    steps:\n{steps}\n"
    )
    state, _ = run(path, parallel=8)
    assert state.is_completed()
    assert stamps.read_text().split() == ["start", "end"] * 3


def test_strategies_from_the_file_and_success_hooks(write_workflow, tmp_path):
    log = tmp_path / "log"
    counter = tmp_path / "n"
    path = write_workflow(f"""
name: s
error_handling:
  strategy: retry
  max_retries: 2
  retry_delay: 0.1
steps:
  - name: flaky
    command: echo x >> {counter}; test $(wc -l < {counter}) -ge 2
    on_success:
      - command: echo step-success >> {log}
on_success:
  - command: echo wf-success >> {log}
post_execution:
  success:
    - command: echo post-success >> {log}
""")
    state, summary = run(path)
    assert state.is_completed(), summary
    assert log.read_text().split() == ["step-success", "wf-success", "post-success"]
    assert next(s for s in summary["steps"] if s["step"] == "flaky")["attempts"] == 2

    path = write_workflow(
        "name: c\nerror_handling:\n  strategy: continue_on_error\nsteps:\n"
        "  - name: g\n    parallel: true\n    steps:\n      - name: bad\n        command: exit 3\n"
        f"      - name: good\n        command: sleep 0.3; echo good >> {log}\n",
        name="continue.yaml",
    )
    state, summary = run(path)
    assert state.is_failed()
    assert states(summary) == {"bad": "Failed", "good": "Completed"}


def test_depends_on_across_groups(write_workflow, tmp_path):
    order = tmp_path / "order"
    path = write_workflow(f"""
name: x
steps:
  - name: build
    parallel: true
    steps:
      - name: slow
        command: sleep 0.5; echo slow >> {order}
      - name: fast
        command: echo fast >> {order}
  - name: ship
    parallel: true
    steps:
      - name: after_slow
        command: echo after_slow >> {order}
        depends_on: [slow]
""")
    state, _ = run(path)
    assert state.is_completed()
    assert order.read_text().split() == ["fast", "slow", "after_slow"]


# -- regressions found in review ------------------------------------------------------------


def test_failing_hooks_do_not_stop_rollback_or_failure_hooks(write_workflow, tmp_path):
    log = tmp_path / "log"
    path = write_workflow(f"""
name: hookfail
rollback:
  steps:
    - command: echo rollback >> {log}
on_failure:
  - command: echo wf-failure >> {log}
steps:
  - name: a
    command: exit 1
    on_failure:
      - command: exit 2
""")
    state, summary = run(path)
    assert state.is_failed() and summary["exit_code"] == 1
    assert log.read_text().split() == ["rollback", "wf-failure"]
    assert "hooks failed" in summary["message"]


def test_timeout_stops_retries_runs_hooks_and_fails(write_workflow, tmp_path):
    log, pid, finished = tmp_path / "log", tmp_path / "pid", tmp_path / "finished"
    path = write_workflow(f"""
name: tmo
on_failure:
  - command: echo hook-ran >> {log}
steps:
  - name: g
    parallel: true
    steps:
      - name: stubborn
        command: echo $$ > {pid}; trap '' TERM; sleep 30; touch {finished}
      - name: retrying
        command: sleep 5; exit 1
        retry: {{attempts: 5, delay: 0}}
  - command: 'true'
""")
    state, summary = run(path, timeout="2s")
    assert state.is_failed()
    got = states(summary)
    assert got["stubborn"] == "TimedOut" and got["step2"] == "NotRun"
    wait_for(lambda: gone(pid), 60)  # SIGKILL after the grace period: it ignores SIGTERM
    assert not finished.exists()
    retrying = next(s for s in summary["steps"] if s["step"] == "retrying")
    assert retrying["attempts"] <= 2
    assert log.read_text().strip() == "hook-ran"  # hooks get their own time after the deadline
    state, summary = run(path, timeout="0s")
    assert state.is_failed() and summary["exit_code"] == 1


def test_sequential_group_does_not_serialise_a_nested_parallel_group(write_workflow, tmp_path):
    stamps = tmp_path / "stamps"
    path = write_workflow(f"""
name: nest
steps:
  - name: outer
    steps:
      - name: inner
        parallel: true
        steps:
          - command: {meeting(stamps, "a", 2)}
          - command: {meeting(stamps, "b", 2)}
""")
    state, _ = run(path)
    assert state.is_completed()
    assert [line.split()[0] for line in stamps.read_text().splitlines()][:2] == ["start", "start"]


def test_group_hooks_run_once_after_the_group(write_workflow, tmp_path):
    log = tmp_path / "log"
    path = write_workflow(f"""
name: grouphooks
steps:
  - name: ok_group
    parallel: true
    on_success:
      - command: echo ok-group-success >> {log}
    steps:
      - command: sleep 0.2
      - command: 'true'
  - name: after
    command: echo after >> {log}
  - name: bad_group
    on_failure:
      - command: echo bad-group-failure >> {log}
    steps:
      - command: exit 1
      - command: 'true'
""")
    state, _ = run(path)
    assert state.is_failed()
    assert log.read_text().split() == ["ok-group-success", "after", "bad-group-failure"]


def test_hook_names_never_borrow_a_steps_settings(write_workflow):
    path = write_workflow("""
name: coll
prerequisites:
  - name: deploy
    command: sleep 1.2
steps:
  - name: deploy
    command: 'true'
    timeout: 1
""")
    state, summary = run(path)
    assert state.is_completed(), summary


def test_skipped_steps_free_their_slot(write_workflow, tmp_path):
    stamps = tmp_path / "stamps"
    path = write_workflow(f"""
name: slot
steps:
  - name: g
    parallel_limit: 2
    steps:
      - command: {meeting(stamps, "a", 2)}
      - when: "{{{{ false }}}}"
        command: 'true'
      - command: {meeting(stamps, "b", 2)}
""")
    state, _ = run(path)
    assert state.is_completed()
    assert [line.split()[0] for line in stamps.read_text().splitlines()][:2] == ["start", "start"]


def test_step_hooks_do_not_hold_up_unrelated_steps(write_workflow, tmp_path):
    stamps = tmp_path / "stamps"
    path = write_workflow(f"""
name: coe
steps:
  - name: g
    parallel: true
    steps:
      - name: a
        command: exit 1
        on_failure:
          - command: i=0; while ! grep -qx c {stamps} 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo hook >> {stamps}
      - name: b
        command: 'true'
      - name: c
        command: echo c >> {stamps}
        depends_on: [b]
""")
    state, _ = run(path, continue_on_error=True)
    assert state.is_failed()
    assert stamps.read_text().split() == ["c", "hook"]


def test_parameters_reach_commands_as_environment(write_workflow):
    path = write_workflow(
        "name: envp\nparameters:\n  - name: msg\n    default: hi\nsteps:\n"
        "  - script: |\n      #!/usr/bin/env python3\n      import os, sys\n"
        "      sys.exit(0 if os.environ['OPSFLOW_PARAM_MSG'] == 'x; $(y)' else 1)\n"
    )
    state, summary = run(path, parameters={"msg": "x; $(y)"})
    assert state.is_completed(), summary


def test_logical_date_is_the_given_tick_else_the_runs_scheduled_start(write_workflow, tmp_path):
    seen = tmp_path / "seen"
    path = write_workflow(
        'name: dated\nvariables:\n  day: "{{ .logical_date[:10] }}"\nsteps:\n'
        f"  - command: echo {{{{ .logical_date }}}} {{{{ .day }}}} $OPSFLOW_LOGICAL_DATE >> {seen}\n"
    )
    tick = "2026-11-01T02:00:00+01:00"
    assert run(path, logical_date=tick)[0].is_completed()
    before = time.time()
    assert run(path)[0].is_completed()
    after = time.time()
    given, default = [line.split() for line in seen.read_text().splitlines()]
    assert given == [tick, "2026-11-01", tick]
    from datetime import datetime

    started = datetime.fromisoformat(default[0])  # this run's expected start time, to the second
    assert default[0] == default[2] and started.utcoffset().total_seconds() == 0
    assert int(before) <= started.timestamp() <= after  # set when the run was created
