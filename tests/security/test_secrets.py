"""Secrets stay secret everywhere: a workflow and a batch run with secret values (unique random
strings), then every place they could have gone is searched for them — the terminal, log files,
the aggregated JSON log, metrics and report files, every table of the records database, and
Prefect's own database, through its API (flow runs, task runs, logs, artifacts, variables,
events) and table by table."""

from __future__ import annotations

import json
import secrets as random_secrets
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine, select

from flows.batch import main
from tests.files.conftest_helpers import wait_for
from tests.receivers import Receiver
from tests.records.conftest import sqlite_url  # noqa: F401


def unique(prefix: str) -> str:
    return f"{prefix}{random_secrets.token_hex(10)}"


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


@pytest.fixture
def home(tmp_path, monkeypatch, sqlite_url):  # noqa: F811
    """OPSFLOW_HOME, the records database and the aggregated logs of this test alone."""
    from flows.settings import get_settings

    folder = tmp_path / "home"
    monkeypatch.setenv("OPSFLOW_HOME", str(folder))
    monkeypatch.setenv("OPSFLOW_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("OPSFLOW_LOG_AGGREGATION_DIR", str(folder / "aggregate"))
    get_settings.cache_clear()
    yield folder
    get_settings.cache_clear()


# -- where secrets could have gone ---------------------------------------------------------------
def _flush_prefect() -> None:
    """Log lines and client-side events reach the API in batches: send them now."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all(timeout=60, at_exit=False)


def _prefect_db_path() -> Path:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    return Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])


def _sqlite_tables(path: Path) -> dict[str, str]:
    """Every row of every table of an SQLite database, as text per table."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: "\n".join(map(repr, db.execute(f'SELECT * FROM "{name}"'))) for name in names}
    finally:
        db.close()


def _wait_for_final_event(run_id: str) -> None:
    """The server persists events in batches: wait until the run's final state event is in."""

    def arrived() -> bool:
        events = _sqlite_tables(_prefect_db_path()).get("events", "")
        return any(
            run_id in line and any(f"prefect.flow-run.{s}" in line for s in ("Completed", "Failed"))
            for line in events.splitlines()
        )

    wait_for(arrived, 90, step=0.5)


def _prefect_api_text() -> dict[str, str]:
    """What Prefect's API answers about runs, logs, artifacts, variables and events."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    found: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        found["flow runs"] = "\n".join(r.model_dump_json() for r in client.read_flow_runs(limit=200))
        found["task runs"] = "\n".join(r.model_dump_json() for r in client.read_task_runs(limit=200))
        logs: list[str] = []
        while page := client.read_logs(log_filter=LogFilter(), limit=200, offset=len(logs)):
            logs += [log.model_dump_json() for log in page]
        found["logs"] = "\n".join(logs)
        found["artifacts"] = "\n".join(a.model_dump_json() for a in client.read_artifacts(limit=200))
        found["variables"] = "\n".join(v.model_dump_json() for v in client.read_variables())
        page = client.read_events(limit=50)
        events = [e.model_dump_json() for e in page.events]
        while page.next_page and len(events) < 5000:
            page = client.read_events_page(page.next_page)
            events += [e.model_dump_json() for e in page.events]
        found["events"] = "\n".join(events)
    return found


def _records_text(url: str) -> dict[str, str]:
    engine = create_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    try:
        with engine.connect() as conn:
            return {
                f"records table {t.name}": "\n".join(map(repr, conn.execute(select(t))))
                for t in meta.sorted_tables
            }
    finally:
        engine.dispose()


def _files_text(*folders: Path) -> dict[str, str]:
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                found[str(path)] = path.read_bytes().decode("utf-8", "replace")
    return found


def leaks(values: dict[str, str], places: dict[str, str]) -> list[str]:
    return sorted(
        f"{what} in {where}" for where, text in places.items() for what, v in values.items() if v in text
    )


def everything(capfd, home: Path, records_url: str, run_ids: list[str]) -> dict[str, str]:
    out, err = capfd.readouterr()
    _flush_prefect()
    for run_id in run_ids:
        _wait_for_final_event(run_id)
    places = {"terminal stdout": out, "terminal stderr": err}
    places |= _files_text(home)  # logs, spooled step output, aggregated log, metrics, batch reports
    places |= _records_text(records_url)
    places |= {f"prefect api: {k}": v for k, v in _prefect_api_text().items()}
    places |= {f"prefect db table {k}": v for k, v in _sqlite_tables(_prefect_db_path()).items()}
    return places


# -- a workflow run --------------------------------------------------------------------------------
WORKFLOW = """\
name: secret-run
parameters:
  - name: api_token
    required: true
  - name: db_url
    required: true
  - name: passphrase
    required: true
  - name: proof
    required: true
  - name: token_file
    required: true
monitoring:
  log_aggregation: true
steps:
  - name: fetch
    command: cat {{ .token_file }}
    capture_output: db_token
  - name: use
    command: |
      echo "calling with {{ .api_token }} at {{ .db_url }} unlocked by {{ .passphrase }}"
      echo "on stderr: $OPSFLOW_PARAM_PASSPHRASE {{ .outputs.db_token }}" >&2
      printf '%s\\n' {{ .api_token }} {{ .db_url }} {{ .passphrase }} {{ .outputs.db_token }} > {{ .proof }}
      echo "the database token is {{ .outputs.db_token }}"
    capture_output: said
  - name: fails
    depends_on: [use]
    command: |
      echo "failing with {{ .passphrase }} and {{ .outputs.db_token }}" >&2
      exit 3
on_failure:
  - name: tell
    command: echo "cleaning up after {{ .api_token }} {{ .passphrase }}"
"""


@pytest.mark.usefixtures("prefect_api")
def test_a_workflow_run_leaves_no_secret_value_anywhere(tmp_path, home, sqlite_url, capfd):  # noqa: F811
    values = {
        "api_token": unique("tok"),
        "db password": unique("pw"),
        "passphrase": unique("phrase"),
        "captured db_token": unique("captured"),
    }
    inputs = tmp_path / "inputs"  # the test's own files, outside what is searched
    inputs.mkdir()
    (inputs / "token").write_text(values["captured db_token"] + "\n")
    proof = inputs / "proof"
    workflow = inputs / "secret-run.yaml"
    workflow.write_text(WORKFLOW)
    db_url = f"postgresql://app:{values['db password']}@db.internal:5432/app"

    code = cli(
        "run",
        str(workflow),
        "--set",
        f"api_token={values['api_token']}",
        "--set",
        f"db_url={db_url}",
        "--set",
        f"passphrase={values['passphrase']}",
        "--set",
        f"proof={proof}",
        "--set",
        f"token_file={inputs / 'token'}",
        "--json",
    )
    assert code == 1  # `fails` fails, as written
    # the secrets did reach the commands that use them
    assert proof.read_text().split() == [
        values["api_token"],
        db_url,
        values["passphrase"],
        values["captured db_token"],
    ]
    out = capfd.readouterr()
    summary = json.loads(out.out)
    assert [s["state"] for s in summary["steps"]] == ["Completed", "Completed", "Failed", "Completed"]
    capfd_text = {"terminal stdout (run)": out.out, "terminal stderr (run)": out.err}

    assert cli("show", summary["workflow_id"], "--json") == 0
    assert cli("history", "--json") == 0
    places = everything(capfd, home, sqlite_url, [summary["workflow_id"]]) | capfd_text
    assert Path(summary["aggregated_log"]).is_file() and list((home / "metrics").glob("*.json"))
    found = leaks(values, places)
    assert not found, "secret values found:\n" + "\n".join(found)


# -- a batch ---------------------------------------------------------------------------------------
@pytest.mark.usefixtures("prefect_api")
def test_a_batch_leaves_no_secret_value_anywhere(tmp_path, home, sqlite_url, capfd, monkeypatch):  # noqa: F811
    values = {
        "notify password": unique("npw"),
        "notify token": unique("ntok"),
        "processor's api token": unique("ptok"),
    }
    monkeypatch.setenv("BATCH_API_TOKEN", values["processor's api token"])
    inputs = tmp_path / "inputs"
    (inputs / "in").mkdir(parents=True)
    (inputs / "in" / "good.txt").write_text("good\n")
    (inputs / "in" / "bad.txt").write_text("bad\n")
    processor = inputs / "proc.sh"
    # A processor that authenticates with a token from its environment, and says so when it fails.
    processor.write_text(
        '#!/bin/sh\ncase "$1" in *bad.txt) echo "refused with token $BATCH_API_TOKEN" >&2; exit 1;; esac\n'
        'echo "using token $BATCH_API_TOKEN"\ncp "$1" "$2"\n'
    )
    processor.chmod(0o755)
    receiver = Receiver()
    notify = f"json://ops:{values['notify password']}@127.0.0.1:{receiver.port}/hook?token={values['notify token']}"
    try:
        code = cli(
            "files",
            "run",
            str(inputs / "in"),
            "--processor",
            f"{processor} {{input}} {{output}}",
            "--output",
            str(inputs / "out"),
            "--retries",
            "0",
            "--notify",
            notify,
            "--name",
            "secret-batch",
            "--json",
        )
        assert code == 1  # bad.txt is dead-lettered
        wait_for(lambda: receiver.bodies, 60)
    finally:
        receiver.close()
    assert (inputs / "out" / "good.txt").read_text() == "good\n"
    out = capfd.readouterr()
    summary = json.loads(out.out)
    assert summary["processed"] == 1 and summary["dead_lettered"] == 1
    capfd_text = {"terminal stdout (run)": out.out, "terminal stderr (run)": out.err}
    assert cli("files", "dlq", "list", "--json") == 0
    assert cli("files", "report", summary["job_id"], "--json") == 0
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["files-secret-batch"]))
        )
    places = everything(capfd, home, sqlite_url, [str(r.id) for r in runs]) | capfd_text
    places["notification body"] = "\n".join(b.decode() for b in receiver.bodies)
    found = leaks(values, places)
    assert not found, "secret values found:\n" + "\n".join(found)
