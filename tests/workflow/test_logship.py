"""`monitoring.log_aggregation`: the JSON-lines file of a run, from real runs and as pure records."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import SecretStr

from flows.masking import Masker
from flows.secrets import MASKED
from flows.workflow.logship import (
    LogAggregator,
    RunIdentity,
    aggregate_path,
    build_record,
    step_record,
)
from flows.workflow.report import StepOutcome

FIELDS = [
    "timestamp",
    "level",
    "workflow",
    "workflow_id",
    "environment",
    "flow_run_id",
    "step",
    "attempt",
    "stream",
    "message",
]
TOKEN = "s3cr3t-Tok3n-9f2c"
RUN = RunIdentity("deploy", "0b4d-run", "staging", "0b4d-run")
AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

CHATTY = """
name: chatty
parameters:
  - name: api_token
    default: "{token}"
  - name: target
    default: "postgresql://app:hunter2pw@db.internal/app"
{monitoring}
steps:
  - name: work
    parallel: true
    steps:
      - name: many
        command: |
          for i in $(seq 1 1500); do echo "many $i"; done
          echo "many on stderr" >&2
      - name: fails
        retry: {{attempts: 2, delay: 0}}
        command: |
          echo "token is {{{{ .api_token }}}}"
          echo "from env: $OPSFLOW_PARAM_API_TOKEN" >&2
          echo "target {{{{ .target }}}}"
          for i in $(seq 1 300); do echo "fails $i"; done
          exit 3
"""


@pytest.fixture
def aggregate_dir(tmp_path, monkeypatch):
    from flows.settings import get_settings

    folder = tmp_path / "aggregate"
    monkeypatch.setenv("OPSFLOW_LOG_AGGREGATION_DIR", str(folder))
    get_settings.cache_clear()
    yield folder
    monkeypatch.delenv("OPSFLOW_LOG_AGGREGATION_DIR")
    get_settings.cache_clear()


def _run(path):
    from flows.workflow.run import run_workflow

    state = run_workflow(path=str(path), environment="staging", continue_on_error=True, return_state=True)
    return state, state.result(raise_on_failure=False)


@pytest.mark.usefixtures("prefect_api")
def test_every_line_of_a_run_with_events_and_secrets_masked(write_workflow, aggregate_dir):
    path = write_workflow(CHATTY.format(token=TOKEN, monitoring="monitoring:\n  log_aggregation: true"))
    state, summary = _run(path)
    assert state.is_failed(), summary
    run_id = summary["workflow_id"]
    file = Path(summary["aggregated_log"])  # named after the run's start day (UTC)
    assert file.parent.parent == aggregate_dir / "chatty" and file.name == f"{run_id}.jsonl"
    assert datetime.strptime(file.parent.name, "%Y-%m-%d")

    text = file.read_text(encoding="utf-8")
    assert TOKEN not in text and "hunter2pw" not in text
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    for record in records:
        assert list(record)[: len(FIELDS)] == FIELDS, record
        assert record["workflow"] == "chatty" and record["environment"] == "staging"
        assert record["workflow_id"] == record["flow_run_id"] == run_id
        assert record["timestamp"].endswith("Z")
        assert datetime.fromisoformat(record["timestamp"]).utcoffset() == timedelta(0)
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps)

    # every output line, past the Prefect log's 1,000, in order, with its stream and attempt
    many = [r for r in records if r["step"] == "many" and r["stream"] != "event"]
    assert [r["message"] for r in many if r["stream"] == "stdout"] == [f"many {i}" for i in range(1, 1501)]
    assert [r["message"] for r in many if r["stream"] == "stderr"] == ["many on stderr"]
    assert {(r["attempt"], r["level"]) for r in many} == {(1, "INFO")}
    fails = [r for r in records if r["step"] == "fails" and r["stream"] != "event"]
    for attempt in (1, 2):
        mine = [r for r in fails if r["attempt"] == attempt]
        assert [r["message"] for r in mine if r["stream"] == "stdout"] == [
            f"token is {MASKED}",
            f"target {MASKED}",  # a URL with a password: the whole parameter is a secret
            *(f"fails {i}" for i in range(1, 301)),
        ]
        assert [r["message"] for r in mine if r["stream"] == "stderr"] == [f"from env: {MASKED}"]

    events = [r for r in records if r["stream"] == "event"]
    first, last = records[0], records[-1]
    assert first["event"] == "run_started" and first["state"] == "Running" and first["step"] is None
    assert first["parameters"]["api_token"] == MASKED
    assert last["event"] == "run_finished" and last["state"] == "Failed" and last["level"] == "ERROR"
    assert last["exit_code"] == summary["exit_code"] != 0
    assert last["duration"] == pytest.approx(summary["duration"], abs=0.5)
    settled = {r["step"]: r for r in events if r["event"] == "step_settled"}
    assert settled["many"]["state"] == "Completed" and settled["many"]["exit_code"] == 0
    assert settled["many"]["level"] == "INFO" and settled["many"]["attempt"] == 1
    assert settled["fails"]["state"] == "Failed" and settled["fails"]["exit_code"] == 3
    assert settled["fails"]["level"] == "ERROR" and settled["fails"]["attempt"] == 2
    assert settled["fails"]["duration"] >= 0 and settled["fails"]["section"] == "steps"
    started = [r["step"] for r in events if r["event"] == "step_started"]
    assert sorted(started) == ["fails", "many"]
    # a step's lines come after it started and before it settled
    index = {id(r): i for i, r in enumerate(records)}
    last_many_line = max(index[id(r)] for r in many)
    assert last_many_line < index[id(settled["many"])]


@pytest.mark.usefixtures("prefect_api")
def test_no_file_without_log_aggregation(write_workflow, aggregate_dir):
    path = write_workflow(CHATTY.format(token=TOKEN, monitoring=""))
    state, summary = _run(path)
    assert state.is_failed(), summary
    assert "aggregated_log" not in summary
    assert not aggregate_dir.exists()
    # the Prefect run log gets the step's lines with the same secrets masked, aggregated or not
    from tests.prefect_logs import run_log_messages

    expected = [
        f"token is {MASKED}",
        f"stderr| from env: {MASKED}",
        "target postgresql://app:***@db.internal/app",
    ]
    messages = run_log_messages(summary["workflow_id"], until=lambda got: all(e in got for e in expected))
    assert f"token is {MASKED}" in messages and f"stderr| from env: {MASKED}" in messages
    assert f"target {MASKED}" in messages
    assert not any(TOKEN in m or "hunter2pw" in m for m in messages)


# -- pure -------------------------------------------------------------------------------------
def test_build_record_fields_order_and_timestamp():
    record = build_record(RUN, "stdout", "hello", at=AT, step="deploy_api", attempt=2)
    assert record == {
        "timestamp": "2026-01-02T03:04:05.678901Z",
        "level": "INFO",
        "workflow": "deploy",
        "workflow_id": "0b4d-run",
        "environment": "staging",
        "flow_run_id": "0b4d-run",
        "step": "deploy_api",
        "attempt": 2,
        "stream": "stdout",
        "message": "hello",
    }
    assert list(record) == FIELDS
    east = AT.astimezone(timezone(timedelta(hours=5)))
    assert build_record(RUN, "stdout", "x", at=east)["timestamp"] == "2026-01-02T03:04:05.678901Z"


def test_build_record_masks_the_message_and_event_strings():
    mask = Masker([TOKEN])
    record = build_record(
        RUN,
        "event",
        f"curl -H 'Authorization: {TOKEN}' https://u:pw@api.internal",
        at=AT,
        mask=mask,
        event="step_settled",
        reason=f"failed with {TOKEN}",
        exit_code=3,
    )
    assert record["message"] == f"curl -H 'Authorization: {MASKED}' https://u:***@api.internal"
    assert record["reason"] == f"failed with {MASKED}"
    assert record["exit_code"] == 3 and record["event"] == "step_settled"


def test_masker_takes_the_records_secrets_in_every_form():
    mask = Masker.for_parameters(
        {
            "api_token": TOKEN,
            "db_password": SecretStr("pw-Very-Secret"),
            "api_keys": ["key-one-1", "key-two-2"],
            "use_token": True,  # a flag, not a secret: "True" stays readable
            "version": "v1.2.3",
            "empty_secret": "",
        }
    )
    assert mask(f"a {TOKEN} b pw-Very-Secret c") == f"a {MASKED} b {MASKED} c"
    assert mask('["key-one-1", "key-two-2"] key-two-2') == f"{MASKED} {MASKED}"
    assert mask("True v1.2.3") == "True v1.2.3"
    assert Masker([]).__call__("plain") == "plain"
    # a secret inside a longer secret: the longer one is masked whole
    assert Masker(["abc", "abcdef"])("abcdef") == MASKED


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app:hunter2pw@db.internal/app",
        "x https://u:p@h y redis://:pw@r:6379/0",
        "1http://a:b@c and no url at all",
        "http://user@host",
    ],
)
def test_url_passwords_masked_as_the_records_do(text):
    from flows.secrets import scrub_text

    assert Masker([])(text) == scrub_text(text)


def test_a_long_line_is_masked_quickly():
    line = "x" * 200_000 + " https://u:pw@h " + "y" * 200_000
    # with an unbounded URL scheme in the pattern this line took minutes (quadratic in a word)
    assert Masker(["nothing-here"])(line).count("https://u:***@h") == 1


def test_step_record_levels_and_facts():
    failed = StepOutcome("fails", "Failed", "steps", 2, 1.23456, 3, "`fails` exited with code 3")
    record = step_record(RUN, failed, AT, Masker([]))
    assert record["level"] == "ERROR" and record["stream"] == "event" and record["event"] == "step_settled"
    assert (record["state"], record["exit_code"], record["duration"], record["attempt"]) == (
        "Failed",
        3,
        1.235,
        2,
    )
    assert (
        record["message"]
        == "step `fails` settled: Failed, exit code 3, 1.235s, attempt 2 (`fails` exited with code 3)"
    )
    skipped = step_record(RUN, StepOutcome("later", "Skipped", reason="when false"), AT, Masker([]))
    assert skipped["level"] == "INFO" and skipped["attempt"] is None and skipped["exit_code"] is None
    not_run = step_record(RUN, StepOutcome("later", "NotRun"), AT, Masker([]))
    assert not_run["level"] == "WARNING" and not_run["reason"] is None


def test_aggregate_path_is_safe_and_dated_in_utc():
    late = datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    path = aggregate_path(Path("/agg"), "deploy api/../x", "../run 1", late)
    assert path == Path("/agg/deploy_api_.._x/2026-03-02/run_1.jsonl")
    assert ".." not in path.relative_to("/agg").parts


# -- the file ---------------------------------------------------------------------------------
def test_concurrent_writers_leave_whole_lines(tmp_path):
    path = tmp_path / "a" / "run.jsonl"
    aggregator = LogAggregator(path, RUN, Masker([TOKEN]), warn=pytest.fail)
    long = "x" * 20_000  # more than a write buffer: a line written in pieces would interleave

    def chatter(step: str) -> None:
        for i in range(200):
            aggregator.output(step, 1, "stdout", f"{i} {long} {TOKEN}")

    threads = [threading.Thread(target=chatter, args=(f"s{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    aggregator.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 800
    for n in range(4):
        mine = [r["message"] for r in records if r["step"] == f"s{n}"]
        assert mine == [f"{i} {long} {MASKED}" for i in range(200)]


def test_lines_written_survive_a_sigkill(tmp_path):
    """Each line is flushed as it is written: a run killed with SIGKILL keeps all of them."""
    path = tmp_path / "killed.jsonl"
    script = f"""
import os, signal
from pathlib import Path
from flows.workflow.logship import LogAggregator, Masker, RunIdentity
agg = LogAggregator(Path({str(path)!r}), RunIdentity("w", "id", "dev", None), Masker([]), print)
for i in range(10):
    agg.output("step", 1, "stdout", f"line {{i}}")
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], timeout=60)
    assert done.returncode == -9
    lines = path.read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == [f"line {i}" for i in range(10)]


def test_plan_says_where_the_log_goes_and_no_longer_calls_it_unenforced(write_workflow, aggregate_dir):
    from flows.workflow.check import analyse
    from flows.workflow.load import load_workflow
    from flows.workflow.params import bind
    from flows.workflow.plan import plan_workflow
    from flows.workflow.show import plan_text

    loaded = load_workflow(
        write_workflow("name: chatty\nmonitoring:\n  log_aggregation: true\nsteps:\n  - command: 'true'\n")
    )
    bound = bind(loaded, {}, environment="staging", default_environment="development", workflow_id="x")
    plan = plan_workflow(loaded, analyse(loaded).graph, bound)
    where = f"{aggregate_dir}/chatty/<YYYY-MM-DD>/<workflow_id>.jsonl"
    assert plan.log_aggregation == where and plan.to_dict()["log_aggregation"] == where
    assert "monitoring.log_aggregation" not in plan.unenforced
    assert f"log aggregation: every line of the run as JSON lines to {where}" in plan_text(plan)


def test_a_run_ending_on_an_error_still_gets_its_last_line(tmp_path):
    """`closing` (around the flow's body): an error before `finish` writes `run_finished`."""
    from flows.errors import DependencyError
    from flows.workflow import logship

    path = tmp_path / "errored.jsonl"
    local = RunIdentity("w", "local", "dev", None)  # outside a flow run the id is "local"
    logship._active["local"] = LogAggregator(path, local, Masker([TOKEN]), warn=pytest.fail)
    with pytest.raises(DependencyError), logship.closing():
        raise DependencyError(f"prerequisite failed, token {TOKEN}")
    assert "local" not in logship._active
    (last,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert (last["event"], last["state"], last["level"]) == ("run_finished", "Failed", "ERROR")
    assert last["exit_code"] == DependencyError.exit_code
    assert last["reason"] == f"prerequisite failed, token {MASKED}"


def test_short_and_non_text_secrets_are_not_masked_in_output():
    # `token_ttl: "60"` matches the secret names, but masking every 60 hides nothing and
    # garbles dates and durations; numbers and flags are no secrets.
    mask = Masker.for_parameters({"token_ttl": "60", "api_token": "abcd1234", "secret_flag": True})
    assert mask("2026-08-18 took 60s with abcd1234") == f"2026-08-18 took 60s with {MASKED}"
