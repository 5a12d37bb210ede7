"""The batch flow on real files, real commands, and both records databases."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from flows.records import files as store
from flows.records.db import session

pytestmark = pytest.mark.usefixtures("prefect_api")

NAMES = ["a.txt", "with space.txt", "quote'd.txt", "-dash.txt", "$(touch PWNED).txt"]


@pytest.fixture
def records(db_url, monkeypatch):
    monkeypatch.setenv("OPSFLOW_DATABASE_URL", db_url)
    return db_url


@pytest.fixture
def inputs(tmp_path):
    root = tmp_path / "in"
    (root / "nested").mkdir(parents=True)
    for name in NAMES:
        (root / name).write_text(f"{name}\n")
    (root / "nested" / "bad-1.txt").write_text("bad\n")
    (root / "nested" / "bad-2.txt").write_text("bad\n")
    return root


def run(**kwargs):
    from flows.files.flow import process_files

    kwargs.setdefault("retry_delay", 0.05)
    state = process_files(**kwargs, return_state=True)
    return state, state.result(raise_on_failure=False)


def test_process_skip_unchanged_and_force(records, inputs, tmp_path):
    out = tmp_path / "out"
    state, summary = run(inputs=[str(inputs)], processor="cp {input} {output}", output=str(out), workers=2)
    assert state.is_completed(), summary
    assert summary["processed"] == 7 and summary["skipped"] == 0
    assert (out / "nested" / "bad-1.txt").read_text() == "bad\n"
    assert (out / "$(touch PWNED).txt").exists() and not list(tmp_path.rglob("PWNED"))

    state, again = run(inputs=[str(inputs)], processor="cp {input} {output}", output=str(out))
    assert again["processed"] == 0 and again["skipped"] == 7

    (inputs / "a.txt").write_text("changed\n")
    (out / "quote'd.txt").unlink()  # a lost output is made again
    state, changed = run(inputs=[str(inputs)], processor="cp {input} {output}", output=str(out))
    assert changed["processed"] == 2 and changed["skipped"] == 5

    state, forced = run(inputs=[str(inputs)], processor="cp {input} {output}", output=str(out), force=True)
    assert forced["processed"] == 7
    with session() as db:
        rows = store.job_results(db, forced["job_id"])
    assert len(rows) == 7 and {r.status for r in rows} == {"completed"}


def test_retries_fallback_and_dead_letter_queue(records, inputs, tmp_path):
    out = tmp_path / "out"
    flaky = tmp_path / "flaky-count"
    # fails on every "bad" file; the fallback rescues bad-1 only
    primary = "grep -qv bad {input} && cp {input} {output}"
    rescue = f"echo x >> {flaky}; grep -q . {{input}} && case {{name}} in bad-1.txt) cp {{input}} {{output}};; *) exit 9;; esac"
    state, summary = run(
        inputs=[str(inputs)], processor=primary, output=str(out), retries=2, fallback=[rescue], workers=2
    )
    assert state.is_failed()
    assert summary["processed"] == 6 and summary["fallback"] == 1 and summary["dead_lettered"] == 1
    assert summary["retried"] == 2
    assert flaky.read_text().count("x") == 4  # bad-1 once, bad-2 three times (1 + 2 retries)
    with session() as db:
        items = store.list_dead_letters(db)
        assert [i.input_path.endswith("bad-2.txt") for i in items] == [True]
        item = items[0]
        assert item.attempts == 6 and json.loads(item.processors) == [primary, rescue]
        assert "exit code 9" in item.error

    from flows.files.recover import reprocess_dead_letters

    state = reprocess_dead_letters(processor="false {input}", return_state=True)
    assert state.is_failed()
    with session() as db:
        assert store.get_dead_letter(db, item.id).retry_count == 1
    state = reprocess_dead_letters(processor="cp {input} {output}", return_state=True)
    assert state.is_completed()
    with session() as db:
        assert store.list_dead_letters(db) == []
    assert (out / "nested" / "bad-2.txt").exists()


def test_bad_input_is_a_validation_error(records, tmp_path):
    from flows.errors import ValidationError

    empty = tmp_path / "empty"
    empty.mkdir()
    state, value = run(inputs=[str(empty)], processor="cat {input}")
    assert state.is_failed() and isinstance(value, ValidationError) and "no input files" in str(value)
    state, value = run(inputs=[str(tmp_path / "*.none")], processor="cat {input}")
    assert isinstance(value, ValidationError)
    state, value = run(inputs=[str(tmp_path)], processor="no_module_here:fn")
    assert isinstance(value, ValidationError)


def test_sigkill_mid_batch_then_resume(records, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from .conftest_helpers import wait_for

    src = tmp_path / "in"
    src.mkdir()
    for i in range(60):
        (src / f"f{i:02d}.txt").write_text(f"{i}\n" * 1000)
    out = tmp_path / "out"
    slow = 'sh -c \'sleep 0.1; cp "$1" "$2"\' _ {input} {output}'
    command = [
        sys.executable,
        "-m",
        "flows.batch",
        "files",
        "run",
        str(src),
        "-p",
        slow,
        "-o",
        str(out),
        "--chunk-size",
        "5",
        "-q",
    ]
    env = dict(os.environ)
    proc = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for(lambda: out.exists() and len([p for p in out.iterdir() if not p.name.startswith(".")]) >= 15, 60)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with session() as db:
        first_job = store.list_jobs(db, limit=1)[0]
        done_before = {r.input_path for r in store.job_results(db, first_job.id, status="completed")}
    # An output is renamed into place just before its record commits: a kill between the two
    # leaves at most one such file per worker, which the re-run processes again.
    assert 13 <= len(done_before) < 60
    again = subprocess.run(command[:-1] + ["--json"], env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    import json

    summary = json.loads(again.stdout)
    assert summary["skipped"] == len(done_before)
    assert summary["processed"] == 60 - len(done_before)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())  # no temporaries
    for produced in out.iterdir():
        assert produced.read_text() == (src / produced.name).read_text()  # nothing half-written
    with session() as db:
        rows = store.job_results(db, first_job.id) + store.job_results(db, summary["job_id"])
    completed = [r.input_path for r in rows if r.status == "completed"]
    assert len(completed) == len(set(completed)) == 60  # none lost, none done twice


def test_completion_callback_from_the_flow(records, inputs, tmp_path):
    from .test_report import Receiver

    receiver = Receiver()
    try:
        state, summary = run(
            inputs=[str(inputs)],
            processor="cp {input} {output}",
            output=str(tmp_path / "o"),
            notify=SecretStr(receiver.url),  # as `files run --notify URL` passes it
        )
    finally:
        receiver.close()
    assert state.is_completed()
    sent = json.loads(json.loads(receiver.bodies[0])["message"])
    assert sent["job_id"] == summary["job_id"] and sent["processed"] == 7
    state, _ = run(
        inputs=[str(inputs)],
        processor="cp {input} {output}",
        output=str(tmp_path / "o"),
        notify=SecretStr("json://127.0.0.1:1/x"),
    )
    assert state.is_completed()  # a dead receiver never fails the batch
    state, value = run(inputs=[str(inputs)], processor="cp {input} {output}")
    assert state.is_failed() and "give an output directory" in str(value)


def test_fail_fast_stops_at_the_first_failure(records, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02d}.txt").write_text("bad\n" if i == 0 else "ok\n")
    state, summary = run(
        inputs=[str(src)], processor="grep -q ok {input}", fail_fast=True, chunk_size=5, workers=1
    )
    assert state.is_failed()
    assert summary["failed"] == 1 and summary["dead_lettered"] == 0
    # one worker: one chunk at a time, so nothing after the failing chunk started
    assert (summary["processed"], summary["not_started"]) == (4, 35), summary
    with session() as db:
        assert store.list_dead_letters(db) == []


def test_an_output_directory_inside_the_input_is_not_an_input(records, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "a.txt").write_text("a")
    out = src / "out"
    for _ in range(2):
        state, summary = run(inputs=[str(src)], processor="cp {input} {output}", output=str(out))
        assert state.is_completed() and summary["total"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
