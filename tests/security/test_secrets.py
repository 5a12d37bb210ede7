"""Secrets stay secret everywhere: a workflow and a batch run with secret values (unique random
strings), then every place they could have gone is searched for them — the terminal, log files,
the aggregated JSON log, metrics and report files, every table of the records database, and
Prefect's own database, through its API (flow runs, task runs, logs, artifacts, variables,
events) and table by table."""

from __future__ import annotations

import json
import os
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
    query = "SELECT count(*) FROM events WHERE resource_id = ? AND event IN (?, ?)"
    final = (f"prefect.flow-run.{run_id}", "prefect.flow-run.Completed", "prefect.flow-run.Failed")

    def arrived() -> bool:
        db = sqlite3.connect(f"file:{_prefect_db_path()}?mode=ro", uri=True)
        try:
            return db.execute(query, final).fetchone()[0] > 0
        finally:
            db.close()

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


# -- what a secret is ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "password", "db_password", "PGPASSWORD", "passwd", "passphrase", "db_pass", "secret",
        "clientSecret", "api_token", "authToken", "api_key", "sshKey", "SSH-KEY", "apikey",
        "credentials", "auth", "oauth_client", "dsn", "private_key", "cookie", "session_id",
    ],
)  # fmt: skip
def test_names_that_say_secret(name):
    from flows.secrets import is_secret_name

    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["monkey", "keyboard", "author", "version", "services", "passenger", "bypass"]
)
def test_names_that_do_not(name):
    from flows.secrets import is_secret_name

    assert not is_secret_name(name)


SECRETS_DECLARED = """\
name: declared
parameters:
  - name: customer_ref
    secret: true
  - name: session_timeout
    secret: false
    default: "1800"
  - name: api_token
    validation: {pattern: "^tok-[a-z0-9]+$"}
steps:
  - name: call
    command: ./call.sh {{ .customer_ref }} {{ .api_token }} {{ .session_timeout }}
"""


def test_secret_true_and_false_decide_over_the_name(write_workflow, capsys):
    from flows.workflow.load import load_workflow
    from flows.workflow.params import secret_names

    path = write_workflow(SECRETS_DECLARED)
    ref, token = unique("ref-"), "tok-" + random_secrets.token_hex(8)
    names = secret_names(
        load_workflow(path), {"customer_ref": ref, "db": "postgres://u:pw@h/db", "region": "x"}
    )
    assert names == {"customer_ref", "api_token", "db"}  # a URL with a password is a secret too
    # `plan` (and `run --dry-run`) show commands rendered: secret values masked there too
    code = cli("plan", str(path), "--set", f"customer_ref={ref}", "--set", f"api_token={token}", "--json")
    out = capsys.readouterr().out
    assert code == 0 and ref not in out and token not in out
    plan = json.loads(out)
    assert plan["parameters"]["customer_ref"] == plan["parameters"]["api_token"] == "**********"
    assert plan["parameters"]["session_timeout"] == "1800"  # opted out: shown
    assert "./call.sh ********** ********** 1800" in json.dumps(plan)
    code = cli("run", str(path), "--dry-run", "--set", f"customer_ref={ref}", "--set", f"api_token={token}")
    out = capsys.readouterr().out
    assert code == 10 and ref not in out and token not in out and "1800" in out


def test_a_secret_value_is_never_quoted_by_an_error(write_workflow, capsys):
    path = write_workflow(SECRETS_DECLARED)
    bad = unique("not-a-token-")
    code = cli("plan", str(path), "--set", "customer_ref=x", "--set", f"api_token={bad}")
    err = capsys.readouterr().err
    assert code == 3 and bad not in err
    assert "`api_token`: the value (a secret, not shown) does not match" in err


def test_masker_takes_a_secret_in_the_forms_a_command_prints_it():
    from flows.masking import Masker

    secret = 'p@ss w/"x"'
    mask = Masker([secret, ["item-one", "item-two"]])
    for shown in [
        secret,
        json.dumps(secret)[1:-1],
        "p%40ss%20w%2F%22x%22",
        "item-one,item-two",
        '["item-one", "item-two"]',
    ]:
        assert "p@ss" not in mask(f"before {shown} after") and "item-" not in mask(shown), shown
    mask.add(["added-later-1"])  # a secret output, once captured
    assert mask("x added-later-1 y") == "x ********** y"


def test_every_log_record_is_masked_while_a_run_masks():
    import logging

    from flows.masking import Masker, masking

    secret = unique("in-an-error-")
    logger = logging.getLogger("opsflow.tests.masking")  # any logger: the filter is on every handler
    logger.propagate = False
    stream_lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            stream_lines.append(self.format(record))

    handler = Keep()
    logger.addHandler(handler)
    try:
        with masking(Masker([secret])):
            try:
                raise ValueError(f"bad value {secret}")
            except ValueError:
                logger.exception("failed with %s", secret)
        logger.error("after the run: https://u:pw@host/x")
    finally:
        logger.removeHandler(handler)
    assert not any(secret in line for line in stream_lines), stream_lines
    assert "failed with **********" in stream_lines[0] and "bad value **********" in stream_lines[0]
    assert stream_lines[1].endswith("https://u:***@host/x")  # URL passwords, always


# -- deployment runs: references, and secrets in clear refused ----------------------------------------
REFERENCED = """\
name: referenced
parameters:
  - name: api_token
    required: true
  - name: proof
    required: true
steps:
  - name: use
    command: |
      echo "token {{ .api_token }}"
      printf '%s' {{ .api_token }} > {{ .proof }}
"""


def _flow_run(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


@pytest.mark.usefixtures("prefect_api", "home")
def test_a_secret_in_clear_in_the_flow_run_parameters_is_refused_and_taken_out(tmp_path, write_workflow):
    from flows.workflow.run import run_workflow

    proof, token = tmp_path / "proof", unique("clear-")
    path = write_workflow(REFERENCED)
    # what a deployment run given a literal gets: plain JSON in the stored parameters
    state = run_workflow(
        path=str(path), parameters={"api_token": token, "proof": str(proof)}, return_state=True
    )
    assert state.is_failed() and not proof.exists()
    assert "came in clear" in state.message and "env:NAME" in state.message
    stored = _flow_run(state.state_details.flow_run_id).parameters
    assert stored["parameters"] == {"api_token": "**********", "proof": str(proof)}
    # a batch given a notification URL in clear, likewise
    from flows.files.flow import process_files

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a\n")
    state = process_files(
        inputs=[str(tmp_path / "in")],
        processor="cp {input} {output}",
        output=str(tmp_path / "out"),
        notify=f"json://ops:{token}@127.0.0.1:9/hook",
        return_state=True,
    )
    assert state.is_failed() and "`notify` came in clear" in state.message
    assert not (tmp_path / "out").exists()
    assert _flow_run(state.state_details.flow_run_id).parameters["notify"] == "**********"


@pytest.mark.usefixtures("prefect_api", "home")
def test_references_are_resolved_inside_the_run_and_stored_as_references(
    tmp_path, write_workflow, monkeypatch
):
    from prefect.blocks.system import Secret

    from flows.records.db import session
    from flows.records.workflows import get_run
    from flows.workflow.run import run_workflow

    path = write_workflow(REFERENCED)
    from_env, from_block = unique("env-"), unique("block-")
    monkeypatch.setenv("OPSFLOW_TEST_API_TOKEN_REF", from_env)
    block = f"opsflow-test-{random_secrets.token_hex(4)}"
    Secret(value=from_block).save(block)
    for ref, expected in [("env:OPSFLOW_TEST_API_TOKEN_REF", from_env), (f"block:{block}", from_block)]:
        proof = tmp_path / f"proof-{expected}"
        state = run_workflow(
            path=str(path), parameters={"api_token": ref, "proof": str(proof)}, return_state=True
        )
        assert state.is_completed(), state.message
        assert proof.read_text() == expected
        run_id = state.state_details.flow_run_id
        assert _flow_run(run_id).parameters["parameters"]["api_token"] == ref
        with session() as db:
            assert (
                json.loads(get_run(db, str(run_id)).parameters)["api_token"] == ref
            )  # resume resolves it again
    monkeypatch.delenv("OPSFLOW_TEST_UNSET_VAR", raising=False)
    state = run_workflow(
        path=str(path),
        parameters={"api_token": "env:OPSFLOW_TEST_UNSET_VAR", "proof": "x"},
        return_state=True,
    )
    assert state.is_failed() and "environment variable OPSFLOW_TEST_UNSET_VAR" in state.message


@pytest.mark.usefixtures("prefect_api", "home")
def test_trigger_and_schedule_refuse_secrets_in_clear(tmp_path, write_workflow, capsys):
    from prefect.client.orchestration import get_client

    from flows.files.flow import process_files
    from flows.schedule import validate_workflow
    from flows.workflow.run import run_workflow

    path = write_workflow(REFERENCED)
    suffix = random_secrets.token_hex(4)
    workflow_dep = run_workflow.to_deployment(name=f"secrets-{suffix}", parameters={"path": str(path)})
    files_dep = process_files.to_deployment(name=f"secrets-{suffix}")
    ids = [workflow_dep.apply(), files_dep.apply()]
    token = unique("clear-")
    refused = [
        (
            "run-workflow",
            ["--param", json.dumps({"api_token": token, "proof": "p"}).join(["parameters=", ""])],
        ),
        (
            "process-files",
            ["--param", "inputs=[]", "--param", "processor=cat", "--param", f"notify=json://u:{token}@h/"],
        ),
        (
            "process-files",
            ["--param", "inputs=[]", "--param", f"processor=curl https://u:{token}@h/ -o {{output}}"],
        ),
    ]
    for flow_name, args in refused:
        assert cli("trigger", f"{flow_name}/secrets-{suffix}", *args) == 3
        err = capsys.readouterr().err
        assert "secret in clear" in err and token not in err, err
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        created = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids)))
    assert created == []  # refused before any run existed
    # a reference or a channel name is what to give instead
    ok = json.dumps({"api_token": "env:API_TOKEN", "proof": "p"}).join(["parameters=", ""])
    assert cli("trigger", f"run-workflow/secrets-{suffix}", "--param", ok) == 0
    assert (
        cli(
            "trigger",
            f"process-files/secrets-{suffix}",
            "--param",
            "inputs=[]",
            "--param",
            "processor=cat",
            "--param",
            "notify=ops",
        )
        == 0
    )
    with pytest.raises(Exception, match="api_token.*stored in clear"):
        validate_workflow(path, [f"api_token={token}", "proof=p"], None)
    assert validate_workflow(path, ["api_token=env:NOT_SET_HERE", "proof=p"], None)[0] == "referenced"


# -- resume, when a step captured a secret ---------------------------------------------------------------
RESUMABLE = """\
name: resumable
parameters:
  - name: api_token
    required: true
steps:
  - name: fetch
    command: |
      cat {here}/token
      echo fetched >> {here}/fetches
    capture_output: db_token
  - name: use
    command: |
      test -e {here}/go
      printf '%s %s' {{{{ .api_token }}}} {{{{ .outputs.db_token }}}} > {here}/proof
"""


@pytest.mark.usefixtures("prefect_api")
def test_resume_runs_a_step_again_whose_output_was_a_secret(tmp_path, home, sqlite_url, capfd):  # noqa: F811
    here = tmp_path / "inputs"
    here.mkdir()
    token, captured = unique("tok-"), unique("captured-")
    (here / "token").write_text(captured + "\n")
    path = here / "resumable.yaml"
    path.write_text(RESUMABLE.format(here=here))
    assert cli("run", str(path), "--set", f"api_token={token}", "--json") == 1  # `use` fails: no `go`
    run_id = json.loads(capfd.readouterr().out)["workflow_id"]
    assert cli("resume", run_id) == 3  # the token was never recorded: it must be given again
    assert "api_token" in capfd.readouterr().err
    (here / "go").touch()
    assert cli("resume", run_id, "--set", f"api_token={token}", "--json") == 0
    resumed = json.loads(capfd.readouterr().out)
    # the secret output was not recorded, so `fetch` ran again and `use` got the real value
    assert (here / "fetches").read_text().splitlines() == ["fetched", "fetched"]
    assert (here / "proof").read_text() == f"{token} {captured}"
    assert [s["state"] for s in resumed["steps"]] == ["Completed", "Completed"]
    assert cli("show", resumed["workflow_id"], "--json") == 0
    shown = json.loads(capfd.readouterr().out)
    assert [s["output"] for s in shown["steps"] if s["step"] == "fetch"] == ["**********"]
    places = everything(capfd, home, sqlite_url, [run_id, resumed["workflow_id"]])
    found = leaks({"api_token": token, "captured db_token": captured}, places)
    assert not found, "secret values found:\n" + "\n".join(found)


@pytest.mark.usefixtures("prefect_api")
def test_a_webhook_callback_url_never_reaches_the_flow_run_parameters(tmp_path, home, sqlite_url, capfd):  # noqa: F811
    import threading

    from flows.files.webhook import IntakeConfig, make_server
    from tests.files.test_webhook import SECRET, body, post, signature, wait_for_callback

    root = tmp_path / "incoming"
    root.mkdir()
    (root / "a.txt").write_text("hello\n")
    config = IntakeConfig(
        secret=SECRET,
        roots=(root.resolve(),),
        processor="cp {input} {output}",
        output=str(tmp_path / "out"),
        callback_hosts=frozenset({"127.0.0.1"}),  # the receiver listens on loopback
    )
    server = make_server(config, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver, token = Receiver(), unique("cb-")
    event_id = f"evt-{random_secrets.token_hex(4)}"
    try:
        raw = body(
            event_type="file_uploaded",
            id=event_id,
            file_path="a.txt",
            callback_url=f"http://127.0.0.1:{receiver.port}/hook?token={token}",
        )
        status, _ = post(f"http://127.0.0.1:{server.server_port}/webhook", raw, signature(SECRET, raw))
        assert status == 202
        assert wait_for_callback(receiver)["status"] == "completed"
    finally:
        receiver.close()
        server.shutdown()
        server.server_close()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        named = FlowRunFilter(name=FlowRunFilterName(any_=[f"webhook-{event_id}"]))
        runs = client.read_flow_runs(flow_run_filter=named)
    assert [r.parameters["callback_url"] for r in runs] == ["**********"]
    found = leaks({"callback token": token}, everything(capfd, home, sqlite_url, [str(r.id) for r in runs]))
    assert not found, "secret values found:\n" + "\n".join(found)


# -- hostile text: passwords inside URLs are found in linear time ----------------------------------------
_HOSTILE_SCRUB = """\
import logging, sys
from flows.masking import Masker, mask, masking
from flows.secrets import safe_parameters, scrub_text, was_scrubbed

lines = [
    "a://:" * 20_000,  # every `://` starts a password that never ends
    "a://" + "a" * 100_000 + "@",
    "a://a:" + "b://c:" * 16_000,
    "x" * 31 + "://" + ":/" * 50_000,
]
for line in lines:
    assert scrub_text(line) == line and not was_scrubbed(line)
    assert Masker(["not-in-the-line"])(line) == line
    with masking(Masker(["not-in-the-line"])):
        assert mask(line) == line
        logging.getLogger("hostile").warning(line)
    assert safe_parameters({"x": line}) == {"x": line}
found = scrub_text("a://u:" + "p" * 100_000 + "@host " + "b://:" * 20_000)
assert found.startswith("a://u:***@host b://:") and "pp" not in found
assert was_scrubbed(found)
print("done")
"""


def test_passwords_in_urls_are_found_in_linear_time_on_hostile_lines():
    """100 kB lines made to make a backtracking URL search rescan the line from every `://`."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _HOSTILE_SCRUB],
        capture_output=True,
        text=True,
        timeout=60,  # a linear scan takes well under a second; the old search, minutes
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]


# -- a secret printed quoted: set -x, printf %q, ${x@Q}, declare -p, shlex.quote, JSON ----------------
_PRINT_QUOTED = r"""
x=$(cat "$1"); x=${x%.}
printf '%q\n' "$x"
printf '[%q]\n' "pre$x"
echo "${x@Q} and pre ${x@Q} post"
declare -p x
set -x
: "$x" "pre $x post"
{ set +x; } 2>/dev/null
python3 -c 'import json, shlex, sys; print(shlex.quote(sys.argv[1]), json.dumps(sys.argv[1]))' "$x"
python3 -c 'import json, sys; print(json.dumps(sys.argv[1], ensure_ascii=False))' "$x"
"""


def _pieces(*separators: str) -> tuple[str, list[str]]:
    """A secret of random pieces joined by `separators`, and the pieces (which must never show)."""
    pieces = [random_secrets.token_hex(6) for _ in range(len(separators) + 1)]
    return "".join(p + s for p, s in zip(pieces, [*separators, ""], strict=True)), pieces


@pytest.mark.parametrize(
    "separators",
    [
        ("'",),
        ('"', "\\"),
        ("$", "`", " "),
        ("'\\''", "!"),
        ("\t", "\x1b", "é"),
        ("#", "~", "=~", "*?[]"),
        ("\n",),
    ],
    ids=["single-quote", "double-quote-backslash", "dollar-backtick-space", "quoted-quote", "tab-escape-utf8",
         "comment-tilde-glob", "newline"],
)  # fmt: skip
def test_a_secret_is_masked_in_every_quoted_form_bash_and_tools_print(tmp_path, separators):
    import subprocess

    from flows.masking import Masker

    secret, pieces = _pieces(*separators)
    (tmp_path / "value").write_text(secret + ".")
    shown = subprocess.run(
        ["bash", "-c", _PRINT_QUOTED, "_", str(tmp_path / "value")], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    printed = (shown.stdout + shown.stderr).splitlines()
    assert any(pieces[-1] in line for line in printed)  # it was printed, in some form
    mask = Masker([secret])
    masked = [mask(line) for line in printed]
    assert not [line for line in masked if any(p in line for p in pieces)], masked


XTRACE = """\
name: xtrace
parameters:
  - name: db_password
    required: true
steps:
  - name: traced
    command: |
      set -x
      test -n {{ .db_password }}
      printf 'escaped: %q\\n' {{ .db_password }}
      echo "quoted: ${OPSFLOW_PARAM_DB_PASSWORD@Q}"
"""


def terminal_run(path: Path, *sets: str) -> tuple[int, str, str]:
    """`run PATH --set ... --json` as an operator's terminal shows it: a process of its own (the
    step lines on its stderr at the default level, whatever earlier tests set in this one)."""
    import subprocess
    import sys

    args = [arg for given in sets for arg in ("--set", given)]
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch", "run", str(path), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[2],
        env={k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_LEVEL"},
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.usefixtures("prefect_api")
def test_a_traced_step_shows_no_piece_of_a_quoted_secret(tmp_path, home, write_workflow):
    path = write_workflow(XTRACE)
    secret, pieces = _pieces("'", ' "', "$", "\\")
    code, out, err = terminal_run(path, f"db_password={secret}")
    assert code == 0, err
    places = {"terminal stdout": out, "terminal stderr": err} | _files_text(home)
    assert "escaped: **********" in err + out
    found = leaks({f"piece {i}": p for i, p in enumerate(pieces)}, places)
    assert not found, (
        "secret pieces found:\n"
        + "\n".join(found)
        + "\n"
        + "\n".join(line for line in err.splitlines() if any(p in line for p in pieces))
    )


LONG_LINE = """\
name: long-line
parameters:
  - name: api_token
    required: true
steps:
  - name: long
    command: |
      python3 -c 'import sys; print("a" * int(sys.argv[1]) + sys.argv[2] + "b" * 50000)' 3990 {{ .api_token }}
      python3 -c 'import sys; print("a" * int(sys.argv[1]) + sys.argv[2] + "b" * 50000)' 3999 {{ .api_token }} >&2
"""


@pytest.mark.usefixtures("prefect_api")
def test_a_secret_across_the_cut_of_a_long_line_shows_no_prefix(home, write_workflow):
    from flows.workflow.shell import MAX_LINE_CHARS

    assert MAX_LINE_CHARS == 4000  # the workflow puts the secret across this cut
    path = write_workflow(LONG_LINE)
    secret = random_secrets.token_hex(12)
    code, out, err = terminal_run(path, f"api_token={secret}")
    assert code == 0, err
    places = {"terminal stdout": out, "terminal stderr": err} | _files_text(home)
    assert "a" * 3990 + "**********" in err and "…[cut]" in err
    found = leaks({"the secret's first characters": secret[:8]}, places)
    assert not found, "secret prefix found:\n" + "\n".join(found)


# -- a running step's command line ------------------------------------------------------------------
VISIBLE_TO_PS = """\
name: ps-visible
parameters:
  - name: api_token
    required: true
  - name: here
    required: true
steps:
  - name: waits
    command: |
      test -n {{ .api_token }}
      printf '%s' "$$" > {{ .here }}/pid
      while [ ! -e {{ .here }}/stop ]; do sleep 0.05; done
      echo "done with {{ .api_token }}"
"""


@pytest.mark.usefixtures("prefect_api")
def test_a_running_step_has_no_secret_in_its_command_line(tmp_path, home, write_workflow, capfd):
    """/proc/PID/cmdline (what `ps` shows every user) of a step's shell and of what it runs."""
    import os
    import threading

    from flows import processes

    path = write_workflow(VISIBLE_TO_PS)
    secret, here = unique("tok-"), tmp_path / "here"
    here.mkdir()
    codes = []
    args = ("run", str(path), "--set", f"api_token={secret}", "--set", f"here={here}", "--json")
    runner = threading.Thread(target=lambda: codes.append(cli(*args)))
    runner.start()
    try:
        wait_for(lambda: (here / "pid").exists() and (here / "pid").read_text(), 120)
        shell = int((here / "pid").read_text())
        group = os.getpgid(shell)
        members = [pid for pid in processes.pids() if (processes.read_stat(pid) or ("", 0, 0))[1] == group]
        assert shell in members
        cmdlines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in members}
        assert all(cmdlines.values())
        assert not [c for c in cmdlines.values() if secret.encode() in c], cmdlines
        # only opsflow's user can read the script the shell runs
        for pid in members:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if "opsflow-" in target:
                    assert target.endswith("(deleted)") and (os.stat(fd).st_mode & 0o077) == 0, target
    finally:
        (here / "stop").touch()
        runner.join(120)
    assert codes == [0]
    assert f"done with {secret}" not in capfd.readouterr().err


# -- errors that quote a value ----------------------------------------------------------------------------
QUOTED_BY_ERRORS = """\
name: quoted-by-errors
parameters:
  - name: api_token
    required: true
  - name: endpoint
    default: "https://example.org"
    validation: {pattern: "^https://[a-z.]+$"}
steps:
  - name: pack
    command: tar -cf /dev/null {{ .api_token }} && curl {{ .endpoint }}
"""


def test_no_error_quotes_any_piece_of_a_secret(write_workflow, capsys):
    """A value that starts with `-`, a URL with a password that fails a pattern, a --set or
    --param item without its name: refused without a prefix or a password shown."""
    from flows.errors import ValidationError
    from flows.trigger import parse_params

    path = write_workflow(QUOTED_BY_ERRORS)
    secret = "-" + random_secrets.token_hex(30)
    password = random_secrets.token_hex(8)
    attempts = [
        ["--set", f"api_token={secret}"],  # starts with `-` where tar reads options
        ["--set", "api_token=x", "--set", f"endpoint=http://ops:{password}@example.org"],
        ["--set", f"{secret[1:]}"],
    ]
    for args in attempts:
        assert cli("plan", str(path), *args) == 3, args
        err = capsys.readouterr().err
        assert secret[1:9] not in err and password not in err, err
    with pytest.raises(ValidationError) as refused:
        parse_params([secret[1:]])
    assert secret[1:9] not in str(refused.value)


# -- URLs as they are shown -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("json://hooks.internal/ops", "json://hooks.internal/…"),
        ("mailto://ops:{pw}@smtp.internal?to=ops@example.org", "mailto://smtp.internal/…"),
        ("json://ops:{pw}@127.0.0.1:8080/hook?token={pw}", "json://127.0.0.1:8080/…"),
        ("json://ops:pa/{pw}@hooks.internal/", "json://…"),  # `/` in the password, unencoded
        ("json://ops:pa?{pw}@hooks.internal/", "json://…"),
        ("json://ops:pa#{pw}@hooks.internal/", "json://…"),
        ("json://ops:pa@{pw}.org/x@hooks.internal/", "json://…"),
        ("tgram://123456789:{pw}/chat", "tgram://…"),  # a bot token where a host would be
        ("slack://{pw}/B1/C1", "slack://…"),
        ("pover://user@{pw}", "pover://…"),
    ],
)
def test_notification_urls_are_shown_without_user_password_or_token(url, shown):
    from flows.notify import redact

    password = random_secrets.token_hex(8)
    url = url.format(pw=password)
    assert redact(url) == shown
    assert password not in redact(url) and "ops" not in redact(url)


def test_a_password_holding_an_at_sign_is_masked_whole():
    from flows.records.db import redacted
    from flows.secrets import scrub_text

    password = random_secrets.token_hex(8)
    url = f"postgresql://app:p@{password}@db.internal:5432/app"
    assert (
        scrub_text(f"connecting to {url} now")
        == "connecting to postgresql://app:***@db.internal:5432/app now"
    )
    assert password not in redacted(url) and redacted(url).endswith("@db.internal:5432/app")


# -- secrets that are numbers, conditions that quote what they rendered, variables made of secrets --
NOT_TEXT = """\
name: not-text
parameters:
  - name: pin_code
    type: int
    secret: true
  - name: api_token
    required: true
variables:
  token_upper: "{{ .api_token | upper }}"
  header: "Bearer {{ .token_upper }}"
steps:
  - name: show
    command: echo {{ .pin_code }} {{ .token_upper }} {{ .header }}
"""


def test_a_secret_typed_int_is_masked_like_text():
    from flows.masking import Masker

    assert Masker([987654])("pin 987654 and 9876543.5") == "pin ********** and **********3.5"
    assert Masker([2.5e9])("2500000000.0") == "**********"


def test_secrets_that_are_numbers_or_made_from_secrets_never_show_in_plan(write_workflow, capsys):
    path = write_workflow(NOT_TEXT)
    assert (
        cli("plan", str(path), "--set", "pin_code=987654", "--param", "api_token=normalsecret2", "--json")
        == 0
    )
    out = capsys.readouterr().out
    assert "echo ********** ********** '**********'" in out  # a variable made of one is one
    assert not [v for v in ("987654", "normalsecret2", "NORMALSECRET2") if v in out], out


@pytest.mark.parametrize("where", ["conditions", "when"])
def test_a_condition_that_is_not_true_or_false_does_not_quote_a_secret(write_workflow, capsys, where):
    condition = '"yes{{ .api_token }}"'
    path = write_workflow(
        "name: cond\nparameters:\n  - name: api_token\n    required: true\n"
        + (f"conditions:\n  - name: go\n    expression: {condition}\n" if where == "conditions" else "")
        + "steps:\n  - name: s\n    command: echo hi\n"
        + (f"    when: {condition}\n" if where == "when" else "")
    )
    assert cli("plan", str(path), "--param", "api_token=normalsecret2") == 3
    err = capsys.readouterr().err
    assert "expected true or false" in err and "yes**********" in err
    assert "normalsecret2" not in err


def test_secrets_nested_in_lists_and_mappings_are_masked():
    from flows.masking import Masker

    mask = Masker([[["hunter2hunter"], {"k": "zzpass9876"}], {"k": "abcd+token99"}])
    line = 'a hunter2hunter b zzpass9876 c {"k": "abcd+token99"} d abcd+token99'
    assert mask(line) == "a ********** b ********** c ********** d **********"
