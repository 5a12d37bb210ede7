"""`opsflow trigger`: a real test server, a real process worker, the command as CI runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows.errors import ValidationError
from flows.trigger import exit_code_for, parse_params
from tests.conftest import ROOT

PREFECT = str(Path(sys.executable).with_name("prefect"))
slow = pytest.mark.slow
FLOW = "opsflow-trigger-echo"
OPTIONAL_TEXT = {"anyOf": [{"type": "string"}, {"type": "null"}]}  # `str | None`
SCHEMA = {"properties": {"value": {"type": "integer"}, "env": {"type": "string"}, "opt": OPTIONAL_TEXT}}


# ---- pure parts


def test_param_values_are_json_when_they_parse_else_text():
    got = parse_params(["workers=4", "name=x", 'inputs=["a","b"]', "flag=true", "empty=", "eq=a=b"])
    assert got == {"workers": 4, "name": "x", "inputs": ["a", "b"], "flag": True, "empty": "", "eq": "a=b"}


def test_string_parameters_keep_their_text_and_unknown_ones_are_refused():
    assert parse_params(["env=1.10", "value=3", "opt=7"], SCHEMA) == {"env": "1.10", "value": 3, "opt": "7"}
    assert parse_params(["opt=null"], SCHEMA) == {"opt": None}
    with pytest.raises(ValidationError, match=r"no parameter nope \(it takes: env, opt, value\)"):
        parse_params(["nope=1"], SCHEMA)


@pytest.mark.parametrize("item", ["novalue", "=4", " =x"])
def test_param_without_key_or_equals_is_refused(item):
    with pytest.raises(ValidationError, match="expected key=value"):
        parse_params([item])


def test_final_states_map_to_exit_codes():
    assert [exit_code_for(t) for t in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")] == [0, 1, 1, 1]
    going_on = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
    assert [exit_code_for(t) for t in going_on] == [None] * 5


# ---- against a Prefect server


@pytest.fixture(scope="module")
def deployed(prefect_api, tmp_path_factory):
    """Two deployments of tests/trigger_flows.py:echo: one on a pool with a worker, one without."""
    tmp = tmp_path_factory.mktemp("trigger")
    tag = uuid.uuid4().hex[:8]
    pool, idle = f"trigger-{tag}", f"trigger-idle-{tag}"
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_WORKER_QUERY_SECONDS="1")
    env["OPSFLOW_HOME"] = str(tmp / "home")
    for name in (pool, idle):
        made = subprocess.run([PREFECT, "work-pool", "create", name, "--type", "process"], env=env, capture_output=True, text=True)  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
    log = tmp / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--name", f"w-{tag}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        (tmp / "prefect.yaml").write_text(
            f"name: opsflow-trigger-tests\n"
            f"pull:\n- prefect.deployments.steps.set_working_directory:\n    directory: {json.dumps(str(ROOT))}\n"
            f"deployments:\n"
            f"- {{name: echo-{tag}, entrypoint: tests/trigger_flows.py:echo, work_pool: {{name: {pool}}}}}\n"
            f"- {{name: idle-{tag}, entrypoint: tests/trigger_flows.py:echo, work_pool: {{name: {idle}}}}}\n"
        )
        done = subprocess.run(
            [PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(tmp / "prefect.yaml")],
            env=env, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield SimpleNamespace(env=env, echo=f"{FLOW}/echo-{tag}", idle=f"{FLOW}/idle-{tag}", tag=tag, log=log)
    finally:  # a worker needs a second SIGINT to stop: end its whole group instead
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def trigger(env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.batch", "trigger", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def read_run(run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(run_id))


def state_lines(stderr: str) -> list[str]:
    words = ("Scheduled", "Pending", "Running", "Completed", "Failed")
    return [w for line in stderr.splitlines() for w in words if line.endswith(f"] {w}") or f"] {w}:" in line]


@slow
def test_wait_streams_states_and_logs_and_exits_0(deployed):
    done = trigger(deployed.env, deployed.echo, "--param", "value=5", "--wait", "--logs", "--timeout", "90s")
    assert done.returncode == 0, done.stderr + deployed.log.read_text()[-2000:]
    assert state_lines(done.stderr)[:4] == ["Scheduled", "Pending", "Running", "Completed"], done.stderr
    assert "echo value=5" in done.stderr, done.stderr
    run_id, name, state, url = done.stdout.split()
    assert state == "Completed" and run_id in url and f"[{name}] Completed in" in done.stderr, done.stderr
    run = read_run(run_id)
    assert run.state.is_completed() and run.parameters == {"value": 5}  # an int, not "5"


@slow
def test_failed_run_exits_1_with_a_json_document(deployed):
    done = trigger(deployed.env, deployed.echo, "-p", "fail=true", "--wait", "--json")
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert {k: doc[k] for k in ("deployment", "state", "exit_code")} == {
        "deployment": deployed.echo,
        "state": "Failed",
        "exit_code": 1,
    }
    assert doc["duration"] > 0 and doc["id"] in doc["url"] and "asked to fail" in doc["message"]
    assert read_run(doc["id"]).name == doc["name"] and "asked to fail" in done.stderr


@slow
@pytest.mark.parametrize("form", ["name", "id"])
def test_without_wait_exits_at_once_with_the_run_id(deployed, form):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # a bare name, when unique, is enough
        which = (
            f"idle-{deployed.tag}"
            if form == "name"
            else str(client.read_deployment_by_name(deployed.idle).id)
        )
    done = trigger(deployed.env, which, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["state"] == "Scheduled" and doc["deployment"] == deployed.idle
    assert read_run(doc["id"]).state.is_scheduled()


@slow
def test_timeout_leaves_the_run_scheduled_and_exits_1(deployed):
    done = trigger(deployed.env, deployed.idle, "--wait", "--timeout", "1s")
    assert done.returncode == 1, done.stderr
    run_id = done.stdout.split()[0]
    assert "is still Scheduled after 1.0s; it goes on (not cancelled)" in done.stderr
    assert run_id in done.stderr and read_run(run_id).state.is_scheduled()


@slow
def test_cancel_on_timeout_cancels_the_run(deployed):
    done = trigger(deployed.env, deployed.idle, "--wait", "--timeout", "0.5s", "--cancel-on-timeout")
    assert done.returncode == 1, done.stderr
    assert "is still Scheduled after 500ms: cancelling it" in done.stderr
    assert read_run(done.stdout.split()[0]).state.type.value in ("CANCELLING", "CANCELLED")


def runs_of(deployment: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        return client.count_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{flow}/nope", "--wait"], "no deployment 'opsflow-trigger-echo/nope'"),
        (["{echo}", "--wait", "--param", "nope=1"], "has no parameter nope (it takes: fail, value)"),
        (["{echo}", "--wait", "--param", 'value="abc"'], "the Prefect API answered 409"),
        (["{echo}", "--wait", "--param", "value"], "--param: expected key=value"),
        (["{echo}", "--wait", "--timeout", "soon"], "--timeout: expected a duration"),
        (["{echo}", "--timeout", "1m"], "need --wait"),
    ],
    ids=["unknown-deployment", "unknown-parameter", "wrong-type", "bad-syntax", "bad-timeout", "no-wait"],
)
@slow
def test_bad_input_exits_3_and_starts_nothing(deployed, args, message):
    before = runs_of(deployed.echo)
    done = trigger(deployed.env, *[a.format(flow=FLOW, echo=deployed.echo) for a in args])
    assert done.returncode == 3, done.stderr
    assert message in done.stderr and done.stdout == ""
    assert runs_of(deployed.echo) == before


@pytest.fixture
def not_prefect(tmp_path):
    """Port of a server that answers 404 to everything, and of one that never answers."""
    import socket

    web = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    silent = socket.create_server(("127.0.0.1", 0))  # listens, never accepts: requests hang
    try:
        port = int(web.stdout.readline().split(" port ")[1].split()[0])
        yield SimpleNamespace(web=port, silent=silent.getsockname()[1])
    finally:
        silent.close()
        web.kill()
        web.wait()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:1/api", "cannot reach the Prefect API"),
        ("http://127.0.0.1:{web}/api", "no Prefect API at"),
        # The command's own bound on a first request, not Prefect's client retrying for minutes.
        (
            "http://127.0.0.1:{silent}/api",
            "no answer from the Prefect API at http://127.0.0.1:{silent}/api in 10s",
        ),
    ],
    ids=["refused", "not-prefect", "no-answer"],
)
@slow
def test_unreachable_api_exits_4_soon_with_one_line(not_prefect, url, message):
    env = dict(os.environ, PREFECT_API_URL=url.format(**vars(not_prefect)))
    # Ends on its own (a command that retried for minutes would hit this generous deadline).
    done = trigger(env, f"{FLOW}/echo", "--wait", timeout=120)
    assert done.returncode == 4, done.stderr
    assert done.stderr.strip().count("\n") == 0 and message.format(**vars(not_prefect)) in done.stderr
