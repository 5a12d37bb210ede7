"""The batch flow on real files, real commands, and both records databases."""

from __future__ import annotations

import json

import pytest

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

    from flows.files.flow import reprocess_dead_letters

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
