"""`rollback.conditions` and `monitoring.health_checks` in real runs: the rollback runs only
when one of its conditions holds; health checks gate the start and judge the end."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from flows.errors import DependencyError, StepFailure, ValidationError

pytestmark = pytest.mark.usefixtures("prefect_api")


def run(path):
    from flows.workflow.run import run_workflow

    state = run_workflow(path=str(path), return_state=True)
    return state, state.result(raise_on_failure=False)


def workflow(log, conditions: str, steps: str, extra: str = "") -> str:
    return f"""name: conditional-rollback
steps:
{steps}rollback:
  conditions: {conditions}
  steps:
    - name: undo
      command: echo rolled back >> {log}
{extra}"""


def sections(summary) -> list[tuple[str, str, str]]:
    return [(s["section"], s["step"], s["state"]) for s in summary["steps"]]


@pytest.fixture
def run_log():
    """The messages of the flow runs' loggers (Prefect's console handler may hold an earlier
    stderr, so capturing the terminal is not reliable across tests)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, logger = Keep(), logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def test_rollback_waits_for_its_condition(write_workflow, tmp_path, run_log):
    log = tmp_path / "log"
    steps = """  - name: migrate
    command: exit {migrate}
  - name: smoke
    health_check: true
    depends_on: [migrate]
    command: exit {smoke}
"""
    path = write_workflow(workflow(log, "[health_check_failed]", steps.format(migrate=1, smoke=0)))
    state, summary = run(path)
    assert state.is_failed() and summary["exit_code"] == StepFailure.exit_code
    assert not log.exists(), "a failure that is not a health check must not roll back"
    assert "rollback not run: none of its conditions held (health_check_failed)" in run_log

    path.write_text(workflow(log, "[health_check_failed]", steps.format(migrate=0, smoke=3)))
    state, summary = run(path)
    assert state.is_failed()
    assert log.read_text().splitlines() == ["rolled back"]
    assert ("rollback", "undo", "Completed") in sections(summary)
    assert "rolling back: health_check_failed" in run_log


def test_deployment_timeout_is_a_step_or_run_running_out_of_time(write_workflow, tmp_path):
    log = tmp_path / "log"
    steps = """  - name: deploy
    timeout: 0.5s
    command: sleep 5
"""
    path = write_workflow(workflow(log, "[deployment_timeout]", steps))
    state, summary = run(path)
    assert state.is_failed()
    assert ("steps", "deploy", "TimedOut") in sections(summary)
    assert log.read_text().splitlines() == ["rolled back"]

    log.unlink()
    path.write_text(workflow(log, "[deployment_timeout]", "  - name: deploy\n    command: exit 1\n"))
    state, _ = run(path)
    assert state.is_failed() and not log.exists()


class Service:
    """An HTTP health endpoint that answers 503 while `down` exists."""

    def __init__(self, down) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(503 if down.exists() else 200)
                self.end_headers()
                self.wfile.write(b"down" if down.exists() else b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/health"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service(tmp_path, monkeypatch):
    down = tmp_path / "down"
    svc = Service(down)
    monkeypatch.setenv("OPSFLOW_HEALTH_ENDPOINTS", f'["svc={svc.url}"]')
    monkeypatch.setenv("OPSFLOW_HEALTH_REQUIRED", '["svc"]')
    yield down
    svc.close()


HEALTH = "monitoring:\n  health_checks: true\n"


def test_health_checks_before_and_after_the_steps(write_workflow, tmp_path, service):
    log, ran, breaks = tmp_path / "log", tmp_path / "ran", tmp_path / "breaks"
    steps = f"""  - name: deploy
    command: echo deployed >> {ran}; [ ! -e {breaks} ] || touch {service}
"""
    text = workflow(log, "[health_check_failed]", steps, HEALTH)

    # healthy before and after: both checks recorded, no rollback
    path = write_workflow(text)
    state, summary = run(path)
    assert state.is_completed(), summary
    assert sections(summary) == [
        ("prerequisites", "health_checks:before", "Completed"),
        ("steps", "deploy", "Completed"),
        ("health_checks", "health_checks:after", "Completed"),
    ]

    # the step breaks the service: the check after the steps fails the run and rolls back
    breaks.touch()
    state, summary = run(path)
    assert state.is_failed() and summary["exit_code"] == StepFailure.exit_code
    assert ("health_checks", "health_checks:after", "Failed") in sections(summary)
    assert "health checks after the steps: unhealthy: svc (required, down)" in summary["message"]
    assert log.read_text().splitlines() == ["rolled back"]

    # unhealthy before the steps: nothing runs, exit 2 like a failed prerequisite, and it is
    # `prerequisite_failed`, not `health_check_failed`: nothing was deployed, nothing to undo
    ran.unlink()
    log.unlink()
    path.write_text(
        text
        + f"""recovery:
  strategies:
    - name: undo
      conditions: [health_check_failed]
      actions: [rollback]
    - name: page
      conditions: [prerequisite_failed]
      actions: [note]
  steps:
    - name: note
      command: echo paged >> {log}
"""
    )
    state, summary = run(path)
    assert state.is_failed() and summary["exit_code"] == DependencyError.exit_code
    assert summary["message"].startswith("health checks before the steps: unhealthy: svc")
    assert not ran.exists()
    assert log.read_text().splitlines() == ["paged"]
    assert [r["strategy"] for r in summary["recovery"]] == ["page"]


def test_health_check_results_are_recorded_for_operators(write_workflow, tmp_path, service):
    from sqlmodel import select

    from flows.records.db import session
    from flows.records.procedures import HealthCheckResult

    path = write_workflow(
        workflow(tmp_path / "log", "[health_check_failed]", "  - command: 'true'\n", HEALTH)
    )
    state, summary = run(path)
    assert state.is_completed(), summary
    with session() as db:
        rows = db.exec(
            select(HealthCheckResult).where(HealthCheckResult.run_id == f"{summary['workflow_id']}:after")
        ).all()
    assert {r.check_name: r.status for r in rows}["svc"] == "up"


def test_listed_health_checks_are_the_only_ones_and_required(write_workflow, tmp_path, service, monkeypatch):
    monkeypatch.setenv("OPSFLOW_HEALTH_REQUIRED", "[]")  # a listed check is required all the same
    service.touch()
    text = workflow(tmp_path / "log", "[health_check_failed]", "  - command: 'true'\n", HEALTH)
    path = write_workflow(text.replace("health_checks: true", "health_checks: [svc]"))
    state, summary = run(path)
    assert summary["exit_code"] == DependencyError.exit_code
    assert summary["message"].startswith("health checks before the steps: unhealthy: svc (required, down): ")
    assert summary["message"].endswith("/health answered HTTP 503")
    assert [s["step"] for s in summary["steps"]] == ["health_checks:before"]

    # a name that is no check is a configuration error (exit 3), not an unhealthy service
    path.write_text(text.replace("health_checks: true", "health_checks: [disk, nope]"))
    state, error = run(path)
    assert state.is_failed() and error.exit_code == ValidationError.exit_code
    assert "monitoring.health_checks names nope, which is no check here" in str(error)
