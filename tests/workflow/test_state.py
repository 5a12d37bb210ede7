"""Saved state of workflow runs: records on SQLite and PostgreSQL, history/show/cleanup, and
`resume` after a failure and after a SIGKILL of the whole `run` process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from pydantic import SecretStr

from flows.batch import main
from flows.errors import ValidationError
from flows.records.db import session
from flows.records.models import to_json, utcnow
from flows.records.workflows import (
    WorkflowRunRecord,
    WorkflowStepRecord,
    delete_runs,
    done_steps,
    finish_run,
    get_run,
    list_runs,
    run_steps,
    runs_older_than,
)
from flows.workflow.history import resume_arguments
from flows.workflow.state import MASKED, file_checksum, masked_parameters
from tests.files.conftest_helpers import wait_for
from tests.records.conftest import db_url, postgres_schema_url, postgres_url, sqlite_url  # noqa: F401


@pytest.fixture
def records(db_url, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OPSFLOW_DATABASE_URL", db_url)
    return db_url


@pytest.fixture
def sqlite_records(sqlite_url, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OPSFLOW_DATABASE_URL", sqlite_url)
    return sqlite_url


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


# -- pure parts ---------------------------------------------------------------------------------
def _record(path, **fields):
    values = {
        "id": "run-1",
        "state": "failed",
        "host": "elsewhere",
        "pid": None,
        "path": str(path),
        "checksum": file_checksum(path),
        "environment": "staging",
        "parameters": to_json({"who": "x"}),
        "options": to_json({"parallel": 2, "continue_on_error": True, "timeout": None}),
    }
    return WorkflowRunRecord(workflow="wf", **(values | fields))


def test_checksum_and_masked_parameters(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text("name: a\n")
    before = file_checksum(path)
    assert len(before) == 64
    path.write_text("name: b\n")
    assert file_checksum(path) != before
    assert masked_parameters({"db_password": MASKED, "who": "x"}) == ["db_password"]


def test_resume_arguments_are_the_originals_or_a_clear_refusal(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text("name: a\n")
    args = resume_arguments(_record(path), force=False, sets={})
    assert args == {
        "path": str(path),
        "parameters": {"who": "x"},
        "environment": "staging",
        "parallel": 2,
        "continue_on_error": True,
        "timeout": None,
        "resume_from": "run-1",
    }
    with pytest.raises(ValidationError, match="nothing to resume"):
        resume_arguments(_record(path, state="completed"), force=False, sets={})
    with pytest.raises(ValidationError, match="token.*--set"):
        resume_arguments(_record(path, parameters=to_json({"token": MASKED})), force=False, sets={})
    assert resume_arguments(
        _record(path, parameters=to_json({"token": MASKED})), force=False, sets={"token": "t"}
    )["parameters"] == {"token": SecretStr("t")}  # to the flow obscured, as `run` passes secrets
    changed = _record(path)
    path.write_text("name: changed\n")
    with pytest.raises(ValidationError, match="changed since.*--force"):
        resume_arguments(changed, force=False, sets={})
    assert resume_arguments(changed, force=True, sets={})["resume_from"] == "run-1"
    later = _record(path, id="run-2", state="failed", resumed_from="run-1")
    with pytest.raises(ValidationError, match="already resumed as run-2 .failed.: resume that one"):
        resume_arguments(_record(path), force=False, sets={}, resumed_as=[later])


def test_resume_gives_again_only_the_masked_secrets(tmp_path):
    # A non-secret given again would be recorded masked and change what the run ran.
    path = tmp_path / "wf.yaml"
    path.write_text("name: a\n")
    record = _record(path, parameters=to_json({"token": MASKED, "who": "x"}))
    with pytest.raises(ValidationError, match="only the secret parameters the record masked .token.; who"):
        resume_arguments(record, force=False, sets={"token": "t", "who": "y"})
    with pytest.raises(ValidationError, match=r"\(none\); who"):
        resume_arguments(_record(path), force=False, sets={"who": "y"})


# -- records ------------------------------------------------------------------------------------
def test_run_and_step_records(records, tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text("name: a\n")
    with session() as db:
        db.add(_record(path, id="old", state="running", started_at=utcnow() - timedelta(days=40)))
        db.add(_record(path, id="new-run", state="running"))
        db.flush()
        db.add(WorkflowStepRecord(run_id="old", step="a", state="Completed", output_name="o", output="v"))
        db.add(WorkflowStepRecord(run_id="old", step="b", state="Failed", exit_code=3))
        db.add(WorkflowStepRecord(run_id="old", step="h", section="on_failure", state="Completed"))
    with session() as db:
        finish_run(db, "new-run", exit_code=0, message=None)
    with session() as db:
        assert [r.id for r in list_runs(db)] == ["new-run", "old"]
        assert get_run(db, "new-").state == "completed"
        assert get_run(db, "nope") is None
        assert [(s.step, s.output) for s in done_steps(db, "old")] == [("a", "v")]
        assert [r.id for r in runs_older_than(db, utcnow() - timedelta(days=30))] == ["old"]
        assert delete_runs(db, ["old"]) == 3
    with session() as db:
        assert [r.id for r in list_runs(db)] == ["new-run"]
        assert run_steps(db, "old") == []


# -- through the real command line ----------------------------------------------------------------
WORKFLOW = """
name: four-steps
parameters:
  - name: mark
    default: m
steps:
  - name: one
    command: echo one >> {log}; echo first-output
    capture_output: first
  - name: two
    command: echo two >> {log}; {two}
  - name: three
    command: echo "three {{{{ .outputs.first }}}} {{{{ .mark }}}}" >> {log}
  - name: four
    command: echo four >> {log}
"""


def _latest(workflow="four-steps"):
    with session() as db:
        return list_runs(db, workflow=workflow, limit=1)[0]


@pytest.mark.usefixtures("prefect_api")
def test_failed_run_resumes_and_history_show_cleanup(sqlite_records, write_workflow, tmp_path, capsys):
    log = tmp_path / "log"
    flag = tmp_path / "fail"
    flag.write_text("")
    path = write_workflow(WORKFLOW.format(log=log, two=f"test ! -e {flag}"))
    assert cli("run", str(path), "--set", "mark=M", "-q") == 1
    first = _latest()
    assert first.state == "failed" and first.exit_code == 1 and first.parameter_dict() == {"mark": "M"}
    flag.unlink()
    capsys.readouterr()
    assert cli("resume", first.id, "--json", "-q") == 0
    summary = json.loads(capsys.readouterr().out)
    assert {s["step"]: s["state"] for s in summary["steps"]} == {
        "one": "Restored",
        "two": "Completed",
        "three": "Completed",
        "four": "Completed",
    }
    assert log.read_text().split("\n") == ["one", "two", "two", "three first-output M", "four", ""]
    second = _latest()
    assert second.resumed_from == first.id and second.state == "completed"
    assert cli("resume", second.id) == 3  # completed: nothing to resume
    assert cli("resume", "0000-unknown") == 3
    capsys.readouterr()

    assert cli("history", "--json", "--workflow", "four-steps") == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [second.id, first.id]
    assert cli("show", first.id) == 0
    out = capsys.readouterr().out
    assert first.id in out and "two" in out and "Failed" in out
    assert cli("cleanup", "--older-than", "0s", "--dry-run") == 0
    assert "would delete 2 run(s)" in capsys.readouterr().out
    assert cli("cleanup", "--older-than", "bad") == 3
    assert cli("cleanup", "--older-than", "0s") == 0
    assert "deleted 2 run(s)" in capsys.readouterr().out
    assert cli("history", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli("run", str(path), "--no-save-state", "-q") == 0  # opted out: nothing recorded
    capsys.readouterr()
    assert cli("history", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.usefixtures("prefect_api")
def test_sigkill_mid_run_then_resume(sqlite_records, write_workflow, tmp_path):
    log = tmp_path / "log"
    gate = tmp_path / "gate"
    # Step two waits at its end for the gate, so the kill lands after it is recorded or during it.
    path = write_workflow(
        WORKFLOW.format(log=log, two="true").replace("name: three", "name: three\n    depends_on: [two]")
    )
    text = path.read_text().replace(
        "  - name: three\n",
        f"  - name: wait\n    command: while [ ! -e {gate} ]; do sleep 0.1; done\n  - name: three\n",
    )
    text = text.replace("depends_on: [two]", "depends_on: [wait]")
    path.write_text(text)
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.batch", "run", str(path), "--parallel", "1", "-q"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def two_recorded() -> bool:
        with session() as db:
            runs = list_runs(db, workflow="four-steps", limit=1)
            return bool(runs) and any(
                s.step == "two" and s.state == "Completed" for s in run_steps(db, runs[0].id)
            )

    try:
        wait_for(two_recorded, 90, step=0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = _latest()
    assert killed.state == "running" and killed.ended_at is None
    from flows.workflow.history import shown_state

    assert shown_state(killed) == "killed"  # its process is gone: `history` says so
    assert log.read_text() == "one\ntwo\n"
    gate.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch", "resume", killed.id, "--json", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    states = {s["step"]: s["state"] for s in json.loads(done.stdout)["steps"]}
    assert states == {
        "one": "Restored",
        "two": "Restored",
        "wait": "Completed",
        "three": "Completed",
        "four": "Completed",
    }
    # Steps one and two did not run again; three saw one's restored output and the original parameter.
    assert log.read_text() == "one\ntwo\nthree first-output m\nfour\n"
    resumed = _latest()
    assert resumed.resumed_from == killed.id and resumed.state == "completed"
    again = subprocess.run(
        [sys.executable, "-m", "flows.batch", "resume", killed.id], env=env, capture_output=True, text=True
    )
    assert again.returncode == 3 and f"already resumed as {resumed.id} (completed)" in again.stderr
