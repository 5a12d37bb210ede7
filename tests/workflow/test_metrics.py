"""Workflow metrics and alerts: computed from the run summary, accumulated across runs in
$OPSFLOW_HOME/metrics, valid Prometheus text, served by `health serve`'s /metrics; alerts reach
a real HTTP receiver with their severity; bad conditions fail `validate` with file:line."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.errors import EXIT_CONFIG
from flows.workflow.alerts import parse_condition
from flows.workflow.graph import build_graph
from flows.workflow.load import load_workflow
from flows.workflow.metrics import alert_values, record_run, update_state
from flows.workflow.report import RunSummary, StepOutcome
from flows.workflow.spec import StepMetrics
from tests.conftest import ROOT
from tests.receivers import Receiver

WORKFLOW = """
name: measured
metrics:
  collectors: [prometheus]
  custom_metrics:
    - name: deployment_duration
      type: histogram
    - name: success_rate
      type: counter
monitoring:
  metrics: [rollback_count]
steps:
  - name: deploy
    command: "true"
    metrics:
      track_duration: true
      track_success: true
      custom_labels:
        service: api
  - name: untracked
    command: "true"
"""


def summary(exit_code: int = 0, deploy: float = 3.0, rollback: bool = False) -> RunSummary:
    run = RunSummary("measured", "staging", "run-1", started=1000.0)
    run.finished = 1042.0
    run.exit_code = exit_code
    run.state = "Completed" if exit_code == 0 else "Failed"
    run.steps = [
        StepOutcome("deploy", "Completed" if exit_code == 0 else "Failed", attempts=2, duration=deploy),
        StepOutcome("untracked", "Completed", attempts=1, duration=1.0),
    ]
    if rollback:
        run.steps.append(StepOutcome("undo", "Completed", section="rollback", attempts=1, duration=0.5))
    return run


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_state_is_computed_from_the_summary():
    tracked = {
        "deploy": StepMetrics(track_duration=True, track_success=True, custom_labels={"service": "api"})
    }
    types = {"deployment_duration": "histogram", "success_rate": "counter", "rollback_count": "counter"}
    state = update_state(None, summary(), types, tracked)
    assert state["runs"] == {"success": 1}
    assert state["named"]["deployment_duration"]["stats"]["sum"] == 42.0
    assert state["named"]["success_rate"]["stats"]["sum"] == 1.0
    assert state["named"]["rollback_count"]["stats"]["sum"] == 0.0
    deploy = state["steps"]["deploy"]
    assert deploy["labels"] == {"service": "api"} and deploy["success"] == 1 and deploy["failure"] == 0
    assert deploy["duration"]["sum"] == 3.0 and "untracked" not in state["steps"]

    failed = update_state(state, summary(exit_code=1, deploy=700.0, rollback=True), types, tracked)
    assert state["runs"] == {"success": 1}  # the input is not changed
    assert failed["steps"]["deploy"]["failure"] == 1
    values = alert_values(failed, summary(exit_code=1, rollback=True))
    assert values["deployment_duration"] == 42.0  # this run's
    assert values["success_rate"] == 0.5  # over both runs
    assert values["rollback_count"] == 1.0
    assert values["failed_steps"] == 1.0 and values["retry_count"] == 1.0


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("deployment_duration > 1800", ("deployment_duration", ">", 1800.0)),
        ("success_rate<0.9", ("success_rate", "<", 0.9)),
        (" failed_steps >= 1 ", ("failed_steps", ">=", 1.0)),
    ],
)
def test_conditions_parse(text, parsed):
    condition = parse_condition(text)
    assert (condition.metric, condition.op, condition.threshold) == parsed


@pytest.mark.parametrize("text", ["deployment_duration >> 5", "1800 < x", "x > 5; rm -rf /", "x > y", ""])
def test_bad_conditions_are_refused(text):
    with pytest.raises(ValueError, match="METRIC OP NUMBER"):
        parse_condition(text)


def test_two_runs_accumulate_in_json_and_prom(write_workflow, tmp_path):
    loaded = load_workflow(write_workflow(WORKFLOW))
    graph = build_graph(loaded)
    directory = tmp_path / "metrics"
    record_run(loaded, graph, summary(deploy=3.0), directory)
    recorded = record_run(loaded, graph, summary(exit_code=1, deploy=700.0, rollback=True), directory)
    assert json.loads(recorded.json_path.read_text()) == recorded.state
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == [
        "measured.json",
        "measured.prom",
    ]
    got = samples(recorded.prom_path.read_text())
    wf = (("workflow", "measured"),)
    assert got[("opsflow_workflow_runs_total", (("outcome", "failure"), *wf))] == 1
    assert got[("opsflow_workflow_runs_total", (("outcome", "success"), *wf))] == 1
    assert got[("opsflow_workflow_deployment_duration_count", wf)] == 2
    assert got[("opsflow_workflow_deployment_duration_sum", wf)] == 84
    assert got[("opsflow_workflow_deployment_duration_bucket", (("le", "60.0"), *wf))] == 2
    assert got[("opsflow_workflow_success_rate_total", wf)] == 1
    assert got[("opsflow_workflow_rollback_count_total", wf)] == 1
    step = (("service", "api"), ("step", "deploy"), ("workflow", "measured"))
    assert got[("opsflow_workflow_step_duration_seconds_bucket", (("le", "5.0"), *step))] == 1
    assert got[("opsflow_workflow_step_duration_seconds_bucket", (("le", "1800.0"), *step))] == 2
    assert got[("opsflow_workflow_step_duration_seconds_sum", step)] == 703
    assert got[("opsflow_workflow_step_runs_total", (("outcome", "failure"), *step))] == 1
    assert got[("opsflow_workflow_step_runs_total", (("outcome", "success"), *step))] == 1
    assert not any(labels and dict(labels).get("step") == "untracked" for _, labels in got)


def test_health_server_serves_workflow_metrics(write_workflow, tmp_path, monkeypatch):
    from flows.health.serve import HealthService, make_server

    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path))
    loaded = load_workflow(write_workflow(WORKFLOW))
    record_run(loaded, build_graph(loaded), summary())
    server = make_server(
        HealthService([], timeout=1.0, environment="test", cache_seconds=5), "127.0.0.1", 0, runs=lambda: []
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            got = samples(response.read().decode())
    finally:
        server.shutdown()
        server.server_close()
    wf = (("workflow", "measured"),)
    assert got[("opsflow_workflow_deployment_duration_count", wf)] == 1
    assert got[("opsflow_workflow_runs_total", (("outcome", "success"), *wf))] == 1
    assert ("opsflow_health_status", ()) in got  # alongside what it served before


ALERTING = """
name: alerting
steps:
  - name: work
    command: "sleep 0.2"
notifications:
  channels: [hook]
monitoring:
  alerts:
    - condition: "deployment_duration > 0.1"
      severity: critical
    - condition: "deployment_duration > 100000"
      severity: warning
    - condition: "success_rate < 1"
      severity: error
"""


@pytest.mark.usefixtures("prefect_api")
def test_firing_alert_reaches_a_real_receiver_with_severity(write_workflow, monkeypatch, tmp_path):
    from flows.workflow.run import run_workflow

    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path))
    hook = Receiver()
    monkeypatch.setenv("OPSFLOW_NOTIFY_HOOK", hook.url)
    try:
        state = run_workflow(path=str(write_workflow(ALERTING)), environment="staging", return_state=True)
    finally:
        hook.close()
    assert state.is_completed()
    posts = [json.loads(body) for body in hook.bodies]
    assert [p["title"] for p in posts] == ["[CRITICAL] opsflow: alerting alert (staging)"]
    assert "severity: CRITICAL" in posts[0]["message"]
    assert "condition: deployment_duration > 0.1" in posts[0]["message"]
    assert posts[0]["type"] == "failure"
    assert (tmp_path / "metrics" / "alerting.prom").exists()


@pytest.mark.parametrize(
    "monitoring, line, message",
    [
        ('  alerts:\n    - condition: "deployment_duration >> 5"\n', 9, "is not `METRIC OP NUMBER`"),
        ('  alerts:\n    - condition: "queue_depth > 5"\n', 9, "unknown metric `queue_depth`"),
        ("  metrics: [deployment_duration, happiness]\n", 8, "`happiness` is not one opsflow computes"),
    ],
)
def test_validate_refuses_bad_monitoring_with_file_and_line(write_workflow, monitoring, line, message):
    text = "name: bad\nsteps:\n  - command: 'true'\nnotifications:\n  channels: [hook]\n\nmonitoring:\n"
    path = write_workflow(text + monitoring)
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_CONFIG == 3, done.stderr
    assert f"{path}:{line}" in done.stderr and message in done.stderr, done.stderr
