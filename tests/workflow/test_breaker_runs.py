"""Circuit breakers in real runs: failures across separate runs open the breaker, an open breaker
runs the fallback instead of the step, and after the recovery timeout one trial closes it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from flows.records.breakers import list_breakers
from flows.records.db import session
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("prefect_api")


def run(path, **params):
    from flows.workflow.run import run_workflow

    state = run_workflow(path=str(path), parameters=params, return_state=True)
    return state, state.result(raise_on_failure=False)


def breaker(name: str):
    with session() as db:
        return next(r for r in list_breakers(db) if r.name == name)


def test_a_breaker_opens_after_failing_runs_falls_back_and_closes_after_recovery(write_workflow, tmp_path):
    name, log = f"flaky_db_{uuid.uuid4().hex[:8]}", tmp_path / "log"
    path = write_workflow(f"""
name: guarded
parameters:
  - name: code
    type: int
    default: 0
circuit_breakers:
  {name}:
    failure_threshold: 2
    recovery_timeout: "3s"
    fallback: [read_only_mode]
steps:
  - name: migrate
    circuit_breaker: {name}
    command: echo migrate >> {log}; exit {{{{ .code }}}}
    fallback_steps:
      - name: maintenance
        command: echo "fallback modes=$OPSFLOW_FALLBACK_MODES" >> {log}
  - name: after
    depends_on: [migrate]
    command: echo "after modes=$OPSFLOW_FALLBACK_MODES" >> {log}
""")
    for failures in (1, 2):
        state, _ = run(path, code=1)
        assert state.is_failed()
        assert (breaker(name).state, breaker(name).failures) == (
            "closed" if failures == 1 else "open",
            failures,
        )
    assert log.read_text().splitlines() == ["migrate", "migrate"]

    state, summary = run(path, code=0)  # open: the step does not run, its fallback does
    assert state.is_completed(), state.message
    steps = {s["step"]: s for s in summary["steps"]}
    assert (
        steps["migrate"]["state"] == "Skipped"
        and f"circuit breaker `{name}` open" in steps["migrate"]["reason"]
    )
    assert log.read_text().splitlines()[2:] == ["fallback modes=read_only_mode", "after modes=read_only_mode"]

    listed = subprocess.run(
        [sys.executable, "-m", "flows.batch", "breakers", "list", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert {"name": name, "state": "open", "failures": 2} in [
        {k: b[k] for k in ("name", "state", "failures")} for b in json.loads(listed.stdout)
    ]

    time.sleep(3.1)  # recovery timeout: one trial run decides
    state, _ = run(path, code=0)
    assert state.is_completed()
    assert log.read_text().splitlines()[4:] == ["migrate", "after modes="]
    assert (breaker(name).state, breaker(name).failures) == ("closed", 0)


def test_without_fallback_an_open_breaker_fails_the_step_and_reset_closes_it(write_workflow, tmp_path):
    name = f"api_{uuid.uuid4().hex[:8]}"
    path = write_workflow(f"""
name: unguarded
circuit_breakers:
  {name}: {{failure_threshold: 1, recovery_timeout: 1h}}
steps:
  - name: call
    circuit_breaker: {name}
    command: exit 3
""")
    assert run(path)[0].is_failed() and breaker(name).state == "open"
    state, summary = run(path)
    assert state.is_failed()
    (call,) = summary["steps"]
    assert call["state"] == "Failed" and "no fallback_steps" in call["reason"] and call["attempts"] == 0
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch", "breakers", "reset", name],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "flows.batch", "breakers", "reset", name],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert missing.returncode == 3 and "no circuit breaker" in missing.stderr
