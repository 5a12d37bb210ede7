"""`schedule add|list|pause|resume|cancel`: deployments of run_workflow on a real Prefect server."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.batch import main
from flows.schedule import FLOW_DEFAULT_ENVIRONMENT, FLOW_NAME, deployment_path, next_from_cron

from .conftest import ROOT, SAMPLES

PREFECT = str(Path(sys.executable).with_name("prefect"))
BASIC = SAMPLES / "basic-deployment.yaml"
RUN = uuid.uuid4().hex[:6]  # unique names: the session's server is shared


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(["schedule", *args])
    return info.value.code


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def read(name: str):
    with client() as c:
        return c.read_deployment_by_name(f"{FLOW_NAME}/{name}")


def gone(name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        read(name)
    except ObjectNotFound:
        return True
    return False


def scheduled_run(dep_id, when: datetime):
    """A future run like the ones the server's scheduler makes (the test server runs no scheduler)."""
    from prefect.states import Scheduled

    with client() as c:
        return c.create_flow_run_from_deployment(
            dep_id, state=Scheduled(scheduled_time=when), tags=["auto-scheduled"]
        )


def test_pure_helpers():
    assert deployment_path(BASIC) == "deployments/workflows/basic-deployment.yaml"
    assert deployment_path(Path("/tmp/x.yaml")) == "/tmp/x.yaml"
    from flows.workflow.run import run_workflow

    # validation binds with the default a worker's run will use
    assert (
        inspect.signature(run_workflow.fn).parameters["default_environment"].default
        == FLOW_DEFAULT_ENVIRONMENT
    )
    after = datetime(2026, 3, 28, 12, tzinfo=UTC)  # Saturday; Paris changes to summer time that night
    assert next_from_cron("0 2 * * 0", "UTC", after) == datetime(2026, 3, 29, 2, tzinfo=UTC)
    assert next_from_cron("0 4 * * 0", "Europe/Paris", after) == datetime(2026, 3, 29, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "0 2 * *"], 'Invalid cron string: "0 2 * *"'),
        (["--cron", "0 2 * * 0", "--timezone", "Mars/Olympus"], 'Invalid timezone: "Mars/Olympus"'),
        (
            ["--cron", "0 2 * * 0", "--set", "image_tag=bad tag!"],
            "parameter `image_tag`: 'bad tag!' does not match",
        ),
        (
            ["--cron", "0 2 * * 0", "--set", "image_tg=v2"],
            "unknown parameter `image_tg` — did you mean `image_tag`?",
        ),
        (["--cron", "0 2 * * 0", "--set", "no-equals"], "--set expects key=value"),
        (["--cron", "0 2 * * 0", "-e", "Prod!"], "parameter `environment`: 'Prod!' does not match"),
        (["--cron", "0 2 * * 0", "--name", "a/b"], "--name 'a/b'"),
    ],
)
def test_bad_cron_timezone_set_or_name_exit_3_before_any_api_call(args, message, capsys):
    # no Prefect server here: bad input has to fail before connecting
    assert cli("add", str(BASIC), *args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_invalid_workflow_file_exits_3_with_file_and_line(write_workflow, capsys):
    bad = write_workflow("name: x\nsteps:\n  - name: a\n    comand: echo\n")
    assert cli("add", str(bad), "--cron", "0 2 * * 0") == 3
    assert f"{bad}:4: unknown key `comand`" in capsys.readouterr().err


def test_add_then_add_again_updates_the_one_deployment(prefect_api, capsys):
    name, pool = f"weekly-{RUN}", f"pool-{RUN}"
    args = [
        str(BASIC),
        "--cron",
        "0 2 * * 0",
        "-e",
        "production",
        "--set",
        "image_tag=v1.2.0,services=api,worker",
    ]
    assert cli("add", *args, "--name", name, "--pool", pool, "--timezone", "Europe/Paris") == 0
    out, err = capsys.readouterr()
    assert f"created work pool '{pool}' (process)" in err and out.startswith(f"created schedule {name}:")
    dep = read(name)
    assert dep.entrypoint == "flows/workflow/run.py:run_workflow" and dep.work_pool_name == pool
    assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    assert dep.parameters == {
        "path": "deployments/workflows/basic-deployment.yaml",
        "environment": "production",
        "parameters": {"image_tag": "v1.2.0", "services": "api,worker"},
    }
    assert sorted(dep.tags) == ["opsflow", "scheduled", "workflow"]
    [sched] = dep.schedules
    assert (sched.schedule.cron, sched.schedule.timezone, sched.active) == ("0 2 * * 0", "Europe/Paris", True)
    with client() as c:
        assert c.read_work_pool(pool).type == "process"

    assert cli("add", str(BASIC), "--cron", "30 4 * * *", "--name", name, "--pool", pool, "--json") == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["action"] == "updated" and "created work pool" not in err
    assert doc["cron"] == "30 4 * * *" and doc["timezone"] == "UTC" and doc["status"] == "active"
    with client() as c:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        same = c.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
    assert [d.id for d in same] == [dep.id]
    [sched] = same[0].schedules
    assert sched.schedule.cron == "30 4 * * *" and same[0].parameters["parameters"] == {}


def test_list_shows_next_run_and_pause_resume_flip_the_schedule(prefect_api, capsys):
    name = f"nightly-{RUN}"
    assert (
        cli("add", str(BASIC), "--cron", "15 3 * * *", "--timezone", "Asia/Tokyo", "--name", name, "-q") == 0
    )
    capsys.readouterr()

    def row():
        capsys.readouterr()
        assert cli("list", "--json") == 0
        return next(r for r in json.loads(capsys.readouterr().out) if r["name"] == name)

    first = row()  # no run made yet: the cron's next time, in the schedule's zone
    assert first["workflow"] == "deployments/workflows/basic-deployment.yaml" and first["status"] == "active"
    expected = next_from_cron("15 3 * * *", "Asia/Tokyo")
    assert datetime.fromisoformat(first["next_run"]) == expected and first["next_run"].endswith("+09:00")
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    scheduled_run(read(name).id, when)
    assert datetime.fromisoformat(row()["next_run"]) == when  # the run the server already has
    assert cli("list") == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(name))
    assert "15 3 * * *" in line and "Asia/Tokyo" in line and line.endswith("active")

    assert cli("pause", name) == 0
    assert not read(name).schedules[0].active
    paused = row()
    assert paused["status"] == "paused" and paused["next_run"] is None
    assert cli("add", str(BASIC), "--cron", "15 3 * * *", "--timezone", "Asia/Tokyo", "--name", name) == 0
    assert "paused: `schedule resume` starts it" in capsys.readouterr().out  # adding again keeps it paused
    assert not read(name).schedules[0].active
    assert cli("resume", name) == 0
    assert read(name).schedules[0].active and row()["status"] == "active"
    capsys.readouterr()
    assert cli("pause", f"nightly-{RUN}x") == 3
    assert f"did you mean '{name}'?" in capsys.readouterr().err


def test_cancel_deletes_the_deployment_and_its_scheduled_runs(prefect_api, capsys):
    from prefect.exceptions import ObjectNotFound

    name = f"cancel-{RUN}"
    assert cli("add", str(BASIC), "--cron", "0 5 * * 1", "--name", name) == 0
    run = scheduled_run(read(name).id, datetime.now(UTC) + timedelta(days=1))
    assert cli("cancel", f"cancl-{RUN}") == 3
    assert f"no schedule 'cancl-{RUN}' — did you mean '{name}'?" in capsys.readouterr().err
    assert cli("cancel", f"zzz-{RUN}-nothing-like-it") == 3
    assert "did you mean" not in capsys.readouterr().err
    assert cli("cancel", name) == 0 and gone(name)
    with client() as c, pytest.raises(ObjectNotFound):
        c.read_flow_run(run.id)
    assert cli("cancel", name) == 3


def test_cancel_keep_deployment_removes_only_the_schedule(prefect_api, capsys):
    name = f"keep-{RUN}"
    assert cli("add", str(BASIC), "--cron", "0 6 * * *", "--name", name) == 0
    assert cli("cancel", name, "--keep-deployment") == 0
    assert "(deployment kept)" in capsys.readouterr().out
    assert read(name).schedules == []
    assert cli("list", "--json") == 0
    assert name not in [r["name"] for r in json.loads(capsys.readouterr().out)]


@pytest.mark.parametrize("args", [["list"], ["add", str(BASIC), "--cron", "0 2 * * 0"], ["cancel", "x"]])
def test_unreachable_api_exits_4_at_once_with_one_line(args):
    env = dict(os.environ, PREFECT_API_URL="http://127.0.0.1:1/api")
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch", "schedule", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # it gives up on its own: one that retried for minutes would end here
    )
    assert done.returncode == 4, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Prefect API at http://127.0.0.1:1/api" in err[0]


def test_a_scheduled_deployment_runs_on_a_real_worker(prefect_api, write_workflow, tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    wf = write_workflow(
        "name: tiny\nparameters:\n  - name: marker\n    required: true\n"
        "steps:\n  - name: write\n    command: echo ran-in-{{ .environment }} > {{ .marker }}\n",
        name="tiny.yaml",
    )
    name, pool = f"tiny-{RUN}", f"worker-pool-{RUN}"
    assert cli("add", str(wf), "--cron", "0 0 1 1 *", "-e", "staging", "--set", f"marker={marker}", "--name", name, "--pool", pool) == 0  # fmt: skip
    with client() as c:
        run = c.create_flow_run_from_deployment(read(name).id)  # what `prefect deployment run` does
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_WORKER_QUERY_SECONDS="1")
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", pool, "--name", f"w-{RUN}"],
        env=env,
        cwd=tmp_path,  # the deployment's pull step takes the run to the project
        stdout=open(tmp_path / "worker.log", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240  # a worker's start and a flow run's, on a busy machine
        while time.monotonic() < deadline:
            with client() as c:
                state = c.read_flow_run(run.id).state
            if state.is_final():
                break
            time.sleep(1)
    finally:  # a worker needs a second SIGINT to stop: end its whole group instead
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert state.is_completed(), (state, (tmp_path / "worker.log").read_text()[-3000:])
    assert marker.read_text() == "ran-in-staging\n"
    assert cli("cancel", name) == 0
