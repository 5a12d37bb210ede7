"""The records layer (flows/records) against real SQLite and real PostgreSQL.

Every test taking `db_url` runs once per backend (see conftest.py), so both behave the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from flows.errors import ConnectionFailure, ValidationError
from flows.records import db, files
from flows.records.models import BatchJob, DeadLetter, FileResult
from tests.records.conftest import create_tables_at_once, reachable_postgres

TABLES = {"processing_jobs", "job_results", "dead_letter_queue"}
PASSWORD = "s3cr3t-Pa55word"


def result(job_id: str, path: str, fingerprint: str = "f0", status: str = "completed", **extra) -> dict:
    return {"job_id": job_id, "input_path": path, "fingerprint": fingerprint, "status": status, **extra}


def new_job(url: str, **fields) -> BatchJob:
    with db.session(url) as s:
        return files.start_job(s, **{"processor": "csv2json", **fields})


# --- where the database is, and reaching it ----------------------------------------------------


def test_default_database_is_sqlite_under_opsflow_home(monkeypatch, tmp_path):
    monkeypatch.delenv("OPSFLOW_DATABASE_URL", raising=False)
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / "home"))
    assert db.database_url() == f"sqlite:///{tmp_path / 'home' / 'records.db'}"
    assert (tmp_path / "home").is_dir()


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_postgres_urls_use_the_psycopg_driver(monkeypatch, scheme):
    monkeypatch.setenv("OPSFLOW_DATABASE_URL", f"{scheme}://ops:pw@db.example:5433/records")
    assert db.database_url() == "postgresql+psycopg://ops:pw@db.example:5433/records"


@pytest.mark.parametrize("url", ["mysql://ops@db/records", "not a url"])
def test_unsupported_database_url_is_a_validation_error(url):
    with pytest.raises(ValidationError) as caught:
        db.get_engine(url)
    assert caught.value.exit_code == 3


def test_redacted_hides_passwords():
    assert db.redacted(f"postgres://ops:{PASSWORD}@h/db") == "postgres://ops:***@h/db"
    assert PASSWORD not in db.redacted(f"postgresql://ops@h/db?password={PASSWORD}")
    assert db.redacted("sqlite:////tmp/r.db") == "sqlite:////tmp/r.db"


def assert_redacted_connection_failure(failure: ConnectionFailure) -> None:
    message = str(failure)
    assert failure.exit_code == 4
    assert "\n" not in message and "***" in message and "127.0.0.1" in message
    chain, seen = failure, []
    while chain is not None:  # nothing in the cause chain may carry the password either
        seen.append(f"{chain!s} {chain!r}")
        chain = chain.__cause__
    assert not any(PASSWORD in text for text in seen)


def test_connection_failure_never_shows_the_password():
    with pytest.raises(ConnectionFailure) as caught:
        db.get_engine(f"postgresql+psycopg://ops:{PASSWORD}@127.0.0.1:1/test")
    assert_redacted_connection_failure(caught.value)


def test_connection_failure_through_the_environment(monkeypatch):
    monkeypatch.setenv("OPSFLOW_DATABASE_URL", f"postgres://ops:{PASSWORD}@127.0.0.1:1/test")
    with pytest.raises(ConnectionFailure) as caught, db.session():
        pass
    assert_redacted_connection_failure(caught.value)


@pytest.mark.services
def test_unknown_postgres_database_is_a_connection_failure(postgres_url):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(database=f"no_such_db_{PASSWORD}", password=PASSWORD)
    with pytest.raises(ConnectionFailure) as caught:
        db.get_engine(url.render_as_string(hide_password=False))
    assert "does not exist" in str(caught.value) or "failed" in str(caught.value)


def test_unopenable_sqlite_file_is_a_connection_failure(tmp_path):
    with pytest.raises(ConnectionFailure, match="unable to open database file"):
        db.get_engine(f"sqlite:///{tmp_path}")  # a directory, not a file


def test_unreachable_service_skips_or_fails_as_required(monkeypatch):
    closed = f"postgresql://ops:{PASSWORD}@127.0.0.1:1/test"
    monkeypatch.delenv("OPSFLOW_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="unreachable") as skipped:
        reachable_postgres(closed)
    monkeypatch.setenv("OPSFLOW_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="OPSFLOW_REQUIRE_SERVICES=1") as failed:
        reachable_postgres(closed)
    assert PASSWORD not in str(skipped.value) + str(failed.value)


def test_engine_is_cached_per_url_and_creates_the_tables(db_url):
    engine = db.get_engine(db_url)
    assert db.get_engine(db_url) is engine
    assert set(inspect(engine).get_table_names()) >= TABLES
    uniques = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("job_results")}
    assert ("job_id", "input_path") in uniques
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        else:
            assert engine.pool._pre_ping
            assert conn.execute(text("SHOW search_path")).scalar().startswith("opsflow_test_")


def test_concurrent_table_creation(db_url):
    create_tables_at_once(db_url)
    engine = db.make_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_session_commits_on_success_and_rolls_back_on_error(db_url):
    kept = new_job(db_url).id
    with pytest.raises(RuntimeError), db.session(db_url) as s:
        files.start_job(s, processor="p", name="lost")
        raise RuntimeError("boom")
    with db.session(db_url) as s:
        assert [job.id for job in s.exec(select(BatchJob))] == [kept]


# --- jobs ----------------------------------------------------------------------------------------


def test_start_and_finish_job(db_url):
    job = new_job(db_url, inputs=["a.csv", "b.csv"], fallbacks=["jq"], options={"schema": "s.json"})
    assert job.status == "running" and len(job.id) == 32
    with db.session(db_url) as s:
        files.finish_job(s, job.id, "completed", {"total": 2, "processed": 1, "skipped": 1}, 1.5)
    with db.session(db_url) as s:
        stored = files.get_job(s, job.id)
    assert (stored.status, stored.total, stored.processed, stored.skipped, stored.retried) == (
        "completed",
        2,
        1,
        1,
        0,
    )
    assert stored.duration == 1.5 and stored.input_list() == ["a.csv", "b.csv"]
    assert stored.fallback_list() == ["jq"] and stored.option_dict() == {"schema": "s.json"}
    assert stored.started_at.tzinfo is UTC and stored.completed_at.tzinfo is UTC
    assert stored.started_at <= stored.completed_at <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: files.start_job(s, processor="p", mode="serial"), "unknown job mode"),
        (lambda s: files.start_job(s, processor="p", colour="red"), "unknown job field"),
        (lambda s: files.finish_job(s, "0" * 32, "done", {}, None), "unknown job status"),
        (lambda s: files.finish_job(s, "0" * 32, "failed", {"bogus": 1}, None), "unknown job counter"),
        (lambda s: files.finish_job(s, "0" * 32, "failed", {}, None), "no job"),
    ],
)
def test_job_input_is_validated(db_url, call, message):
    with pytest.raises(ValidationError, match=message), db.session(db_url) as s:
        call(s)


def test_list_jobs_newest_first(db_url):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [new_job(db_url, created_at=base + timedelta(minutes=i)).id for i in range(3)]
    with db.session(db_url) as s:
        assert [job.id for job in files.list_jobs(s)] == ids[::-1]
        assert [job.id for job in files.list_jobs(s, limit=2)] == ids[:0:-1]


def test_get_job_by_unique_prefix(db_url):
    first = new_job(db_url, id="abcdef01" + "0" * 24).id
    second = new_job(db_url, id="abcdef02" + "0" * 24).id
    with db.session(db_url) as s:
        assert files.get_job(s, first).id == first
        assert files.get_job(s, "abcdef01").id == first
        assert files.get_job(s, "ABCDEF02").id == second
        assert files.get_job(s, "abcdef03") is None
        assert files.get_job(s, "not-an-id") is None
        with pytest.raises(ValidationError, match="matches several jobs"):
            files.get_job(s, "abcdef")  # ambiguous: an error, never a guess
        with pytest.raises(ValidationError, match="too short"):
            files.get_job(s, "abcde")


def test_mark_crashed(db_url):
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    stale = new_job(db_url, started_at=long_ago).id
    fresh = new_job(db_url).id
    done = new_job(db_url, started_at=long_ago, status="completed").id
    with db.session(db_url) as s:
        assert files.mark_crashed(s, timedelta(hours=1)) == [stale]
    with db.session(db_url) as s:
        statuses = {job_id: files.get_job(s, job_id).status for job_id in (stale, fresh, done)}
        assert files.mark_crashed(s, timedelta(hours=1)) == []
    assert statuses == {stale: "crashed", fresh: "running", done: "completed"}


# --- per-file results ------------------------------------------------------------------------------


def test_record_results_upserts_instead_of_duplicating(db_url):
    job = new_job(db_url)
    with db.session(db_url) as s:
        files.record_results(s, [result(job.id, "a.csv", status="failed", attempts=1, error="bad row")])
    with db.session(db_url) as s:
        first_id = files.job_results(s, job.id)[0].id
        files.record_results(s, [result(job.id, "a.csv", attempts=2, processor="jq", output_path="o/a.json")])
    with db.session(db_url) as s:
        rows = files.job_results(s, job.id)
    assert len(rows) == 1
    row = rows[0]
    assert (row.id, row.status, row.attempts, row.processor, row.error) == (
        first_id,
        "completed",
        2,
        "jq",
        None,
    )
    assert row.output_path == "o/a.json" and row.completed_at.tzinfo is UTC


def test_record_results_keeps_the_last_of_repeated_rows_in_one_call(db_url):
    job = new_job(db_url)
    with db.session(db_url) as s:
        written = files.record_results(s, [result(job.id, "a", status="failed"), result(job.id, "a")])
        assert written == 1
        assert [r.status for r in files.job_results(s, job.id)] == ["completed"]


def test_record_results_fills_in_missing_timestamps(db_url):
    job = new_job(db_url)
    with db.session(db_url) as s:
        files.record_results(s, [result(job.id, "a", status="skipped", started_at=None, completed_at=None)])
        row = files.job_results(s, job.id)[0]
    assert row.started_at.tzinfo is UTC and row.completed_at <= datetime.now(UTC)


def test_record_results_validates_rows(db_url):
    job = new_job(db_url)
    for row, message in [
        (result(job.id, "a", status="done"), "unknown result status"),
        (result(job.id, "a", colour="red"), "unknown result field"),
        ({"job_id": job.id, "input_path": "a", "status": "completed"}, "invalid result row"),
    ]:
        with pytest.raises(ValidationError, match=message), db.session(db_url) as s:
            files.record_results(s, [row])
    with pytest.raises(IntegrityError), db.session(db_url) as s:  # the job must exist
        files.record_results(s, [result("f" * 32, "a")])


def test_job_results_filter_by_status(db_url):
    job = new_job(db_url)
    with db.session(db_url) as s:
        files.record_results(s, [result(job.id, "a"), result(job.id, "b", status="failed")])
        assert [r.input_path for r in files.job_results(s, job.id, status="failed")] == ["b"]
        assert [r.input_path for r in files.job_results(s, job.id)] == ["a", "b"]


def test_completed_fingerprints_over_thousands_of_files(db_url):
    statuses = ["completed", "skipped", "failed", "dead_lettered"]
    first, second = new_job(db_url), new_job(db_url)
    rows = [
        result(job.id, f"in/{i}.csv", fingerprint=f"fp{i:05d}", status=statuses[i % 4])
        for i in range(2000)
        for job in [(first, second)[i % 2]]
    ]
    with db.session(db_url) as s:
        assert files.record_results(s, rows) == 2000
    asked = [f"fp{i:05d}" for i in range(2500)]  # 500 of them were never seen
    with db.session(db_url) as s:
        found = files.completed_fingerprints(s, asked)
        assert files.completed_fingerprints(s, []) == set()
    assert found == {f"fp{i:05d}" for i in range(2000) if i % 4 in (0, 1)}
    assert len(found) == 1000


# --- dead-letter queue ---------------------------------------------------------------------------


def send(url: str, job_id: str, path: str = "in/a.csv", **fields) -> DeadLetter:
    values = {"fingerprint": "f1", "error": "parse error", "attempts": 3, "processors": ["csv2json", "jq"]}
    with db.session(url) as s:
        return files.dead_letter(s, input_path=path, job_id=job_id, **{**values, **fields})


def test_dead_letter_upsert_keeps_one_item_per_file(db_url):
    first, second = new_job(db_url), new_job(db_url)
    item = send(db_url, first.id, output_dir="out", options={"schema": "s.json"})
    assert (item.retry_count, item.processor_list(), item.option_dict()) == (
        0,
        ["csv2json", "jq"],
        {"schema": "s.json"},
    )
    with db.session(db_url) as s:
        again = files.dead_letter_failed_again(s, item.id, "still broken", 2, ["jq"])
    assert (again.retry_count, again.error, again.attempts) == (1, "still broken", 2)
    later = send(db_url, second.id, error="timeout", attempts=5, processors=["csv2json"])
    assert later.id == item.id
    assert (later.job_id, later.error, later.attempts, later.processor_list()) == (
        second.id,
        "timeout",
        5,
        ["csv2json"],
    )
    assert later.retry_count == 1 and later.first_failed_at == item.first_failed_at
    assert later.last_failed_at > item.last_failed_at and later.first_failed_at.tzinfo is UTC
    with db.session(db_url) as s:
        assert len(list(s.exec(select(DeadLetter)))) == 1


def test_dead_letter_failed_again_counts_every_failure(db_url):
    item = send(db_url, new_job(db_url).id)
    for _ in range(3):
        with db.session(db_url) as s:
            files.dead_letter_failed_again(s, item.id, "again", 1, "[]")
    with db.session(db_url) as s:
        assert files.get_dead_letter(s, item.id).retry_count == 3
        assert files.dead_letter_failed_again(s, item.id + 1000, "gone", 1, []) is None


def test_list_and_resolve_dead_letters(db_url):
    job = new_job(db_url)
    items = [send(db_url, job.id, path=f"in/{i}.csv") for i in range(3)]
    with db.session(db_url) as s:
        assert [d.id for d in files.list_dead_letters(s)] == [d.id for d in items]
        assert len(files.list_dead_letters(s, limit=2)) == 2
        assert files.resolve_dead_letter(s, items[0].id) is True
        assert files.resolve_dead_letter(s, items[0].id) is False
        assert files.get_dead_letter(s, items[0].id) is None
    with db.session(db_url) as s:
        assert files.get_dead_letter(s, items[0].id) is None
        assert [d.input_path for d in files.list_dead_letters(s)] == ["in/1.csv", "in/2.csv"]
        assert s.exec(select(FileResult)).all() == []


def test_records_created_by_an_older_opsflow_get_the_new_columns(db_url):
    # A database from before jobs recorded their process: the columns come back, data kept.
    db.get_engine(db_url)
    engine = db.make_engine(db_url)
    with engine.begin() as conn:
        for column in ("host", "pid", "error"):
            conn.execute(text(f"ALTER TABLE processing_jobs DROP COLUMN {column}"))
        conn.execute(text("INSERT INTO processing_jobs (id, name, processor, fallbacks, inputs, mode, status, "
                          "created_at, started_at, total, processed, skipped, retried, fallback, dead_lettered, "
                          "options) VALUES ('old', 'files', 'cp', '[]', '[]', 'sequential', 'completed', "
                          "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1, 1, 0, 0, 0, 0, '{}')"))  # fmt: skip
    engine.dispose()
    db.dispose_engines()
    job = new_job(db_url, host="here", pid=42)
    with db.session(db_url) as s:
        assert s.get(BatchJob, job.id).pid == 42 and s.get(BatchJob, "old").host is None
    assert {"host", "pid", "error"} <= {
        c["name"] for c in inspect(db.get_engine(db_url)).get_columns("processing_jobs")
    }
