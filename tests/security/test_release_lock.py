"""A release never puts an unapproved version live.

Production live on blue (2.0.0); `release deploy 2.2.0` paused for approval with green already
serving 2.2.0; `release rollback` then switched traffic to green (the unapproved 2.2.0) and
exited 0, and rejecting the paused release afterwards stopped green and left `current -> green`:
the router answered 502. Now deploy, rollback and stop hold the environment's lock (a second
one is refused, exit 2, naming the holder), and a release that does not go live always puts
`current` back to the color that was live before it. Later holes, each with its test here:
a version that failed its test was logged `rolled_back`, which counted as "went live", so a
rollback put it live; `-e production/` or `--root` naming production's directory under another
environment took another lock and skipped approval; a deploy that lost its lock (stopped past
its lease) still switched traffic and rolled back the new holder's color; a killed deploy
stayed `running` in `release history`. Real release target, router, instances, Prefect server
(pause/input) and records database throughout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows.approve import approve
from flows.batch import main
from flows.errors import DependencyError, ValidationError
from flows.records.locks import OperationLock, acquire
from flows.release import instances
from flows.release.flow import release
from flows.release.rollback import rollback_release
from flows.release.target import Target
from tests.conftest import ROOT
from tests.paused import wait_paused

ENV = "production"


def command(capsys, *args: str) -> tuple[int, list[str]]:
    """`python -m flows.batch ARGS` in this process: its exit code and its error lines."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return done.value.code, [line for line in capsys.readouterr().err.splitlines() if "[ERROR]" in line]


def held_locks() -> list[OperationLock]:
    """Every row of the records' `operation_lock` table."""
    from sqlmodel import select

    from flows.records.db import session

    with session() as db:
        rows = list(db.exec(select(OperationLock)))
        for row in rows:
            db.expunge(row)
        return rows


def lock_of(pid: int) -> OperationLock | None:
    """The lock row the process `pid` holds, whatever key it is under."""
    return next((row for row in held_locks() if row.pid == pid), None)


def history(capsys) -> list[dict]:
    """`release history -e production --json`, newest first."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["release", "history", "-e", ENV, "--json"])
    assert done.value.code == 0
    return json.loads(capsys.readouterr().out)


def port_args(ports) -> list[str]:
    return [
        "--blue-port", str(ports["blue_port"]), "--green-port", str(ports["green_port"]),
        "--router-port", str(ports["router_port"]),
    ]  # fmt: skip


def start_deploy(version, root, ports, app) -> subprocess.Popen:
    """`release deploy VERSION -e production` in the background: it pauses for approval."""
    args = ["release", "deploy", version, "-e", ENV, "--root", str(root), "--source", str(app)]
    return subprocess.Popen(
        [sys.executable, "-m", "flows.batch", *args, *port_args(ports)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


@contextmanager
def deploying(version, root, ports, app) -> Iterator[subprocess.Popen]:
    """`release deploy VERSION -e production` in the background (it pauses for approval); killed
    afterwards if still there, and its run cancelled if still paused, so no later test sees it."""
    proc = start_deploy(version, root, ports, app)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=60)
        cancel_paused_runs()


def cancel_paused_runs() -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.states import Cancelled

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["PAUSED"])))
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=paused):
            client.set_flow_run_state(run.id, Cancelled(message="left paused by a test"), force=True)


def live_on_blue(root, ports, app, version="2.0.0") -> None:
    done = release(
        version=version, source=str(app), environment=ENV, root=str(root), approval="never", **ports
    )
    assert done["exit_code"] == 0 and Target(root).live() == "blue"


def router(ports) -> tuple[int | None, str | None]:
    status, doc = instances.probe(instances.health_url(ports["router_port"]))
    return status, doc.get("version")


class RouterWatch:
    """Asks the router for /health all along, from a thread, and keeps every answer."""

    def __init__(self, ports) -> None:
        self.answers: list[tuple[int | None, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(ports,), daemon=True)
        self._thread.start()

    def _watch(self, ports) -> None:
        while not self._stop.is_set():
            self.answers.append(router(ports))
            self._stop.wait(0.2)

    def stop(self) -> list[tuple[int | None, str | None]]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.answers


def test_nothing_switches_to_a_release_waiting_for_approval(prefect_api, target_root, ports, app, capsys):
    live_on_blue(target_root, ports, app)
    watch = RouterWatch(ports)
    try:
        with deploying("2.2.0", target_root, ports, app) as proc:
            run_id = wait_paused()
            assert instances.probe(instances.health_url(ports["green_port"]))[1]["version"] == "2.2.0"

            root = ["--root", str(target_root)]
            code, errors = command(capsys, "release", "rollback", "-e", ENV, *root, "-r", "customer report")
            assert code == 2 and len(errors) == 1, errors
            assert "another release operation is in progress, `release deploy 2.2.0` in flow run" in errors[0]
            assert f"({run_id})" in errors[0] and f"python -m flows.batch approve {run_id}" in errors[0]

            deploy = ["release", "deploy", "2.3.0", "-e", ENV, *root, "--source", str(app), *port_args(ports)]
            for refused in (deploy, ["release", "stop", "-e", ENV, *root]):
                code, errors = command(capsys, *refused)
                assert code == 2 and len(errors) == 1 and f"approve {run_id}" in errors[0], (refused, errors)

            assert approve(run=run_id, reject=True, reason="not approved") == 0
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 1, err
    finally:
        answers = watch.stop()
    assert answers and set(answers) == {(200, "2.0.0")}  # the approved version, all along
    assert router(ports) == (200, "2.0.0") and Target(target_root).live() == "blue"
    assert held_locks() == []  # the rejected release let go of the environment


def test_a_rejected_release_puts_current_back_whoever_moved_it(prefect_api, target_root, ports, app):
    live_on_blue(target_root, ports, app)
    with deploying("2.2.0", target_root, ports, app) as proc:
        run_id = wait_paused()
        Target(target_root).point("current", "green")  # moved while paused, by hand or by another tool
        assert router(ports) == (200, "2.2.0")
        assert approve(run=run_id, reject=True, reason="not approved") == 0
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 1, err
    assert Target(target_root).live() == "blue" and router(ports) == (200, "2.0.0")
    assert instances.running_pid(target_root, "green") is None  # stopped once it no longer served


def test_a_killed_release_is_taken_over_and_shown_killed(prefect_api, target_root, ports, app, capsys):
    live_on_blue(target_root, ports, app)
    with deploying("2.2.0", target_root, ports, app) as proc:
        wait_paused()
        holder = lock_of(proc.pid)
        assert holder is not None and holder.waiting_for == "approval"
        assert [(r["version"], r["outcome"]) for r in history(capsys)][:1] == [("2.2.0", "running")]
    # Killed (SIGKILL) while it waited: it never released its lock; its paused run is cancelled.
    # Its release_log row can never be closed: history tells it is dead, as for workflow runs.
    assert [(r["version"], r["outcome"]) for r in history(capsys)][:2] == [
        ("2.2.0", "killed"),
        ("2.0.0", "released"),
    ]

    # The holder's process is gone, so its lock does not block; green still has the unapproved
    # 2.2.0 the killed release left, and the rollback refuses to put that live.
    state = rollback_release(environment=ENV, root=str(target_root), return_state=True, **ports)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, DependencyError), error
    assert "green serves 2.2.0, which never went live in production" in str(error)
    assert router(ports) == (200, "2.0.0")

    done = release(
        version="2.3.0", source=str(app), environment=ENV, root=str(target_root), approval="never", **ports
    )
    assert done["exit_code"] == 0 and router(ports) == (200, "2.3.0")
    assert held_locks() == []


class NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextmanager
def answering_404(port: int) -> Iterator[None]:
    """Something else answers 404 on `port`: an instance started there fails its health test."""
    server = ThreadingHTTPServer(("127.0.0.1", port), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_a_version_that_failed_its_test_never_goes_live_through_rollback(
    prefect_api, target_root, ports, app, capsys
):
    live_on_blue(target_root, ports, app, "1.0.0")
    with answering_404(ports["green_port"]):
        state = release(
            version="6.6.6", source=str(app), environment=ENV, root=str(target_root), approval="never",
            return_state=True, **ports,
        )  # fmt: skip
    assert state.result(raise_on_failure=False).exit_code == 1
    assert [(r["version"], r["outcome"]) for r in history(capsys)][:1] == [("6.6.6", "failed")]

    # Deployed again, killed while it waits for approval: green serves the unapproved 6.6.6.
    with deploying("6.6.6", target_root, ports, app):
        wait_paused()
        assert instances.probe(instances.health_url(ports["green_port"]))[1]["version"] == "6.6.6"
    assert Target(target_root).live() == "blue" and Target(target_root).version("green") == "6.6.6"

    code, errors = command(capsys, "release", "rollback", "-e", ENV, "--root", str(target_root))
    assert code == 2 and len(errors) == 1, errors
    assert "green serves 6.6.6, which never went live in production" in errors[0]
    assert router(ports) == (200, "1.0.0") and Target(target_root).live() == "blue"


def test_another_spelling_of_production_gets_neither_its_lock_nor_past_its_approval(
    prefect_api, target_root, ports, app, capsys, monkeypatch, tmp_path
):
    releases = tmp_path / "releases"
    releases.mkdir()
    monkeypatch.setenv("OPSFLOW_RELEASE_ROOT", str(releases))
    (releases / "production").symlink_to(target_root)  # production's own directory
    (releases / "staging").symlink_to(target_root)  # a staging that is production under another name
    deploy = ["release", "deploy", "6.6.6", "--source", str(app), *port_args(ports)]

    # Production's default directory is production's even before its first release.
    code, errors = command(capsys, *deploy, "-e", "staging", "--root", str(releases / "production"))
    assert code == 3 and len(errors) == 1 and "production" in errors[0], errors
    assert Target(target_root).live() is None

    live_on_blue(target_root, ports, app)
    watch = RouterWatch(ports)
    try:
        with deploying("2.2.0", target_root, ports, app) as proc:
            run_id = wait_paused()
            names = ["production/", "./production", str(releases / "production"), "Production", "prod uction"]
            for name in names:
                for operation in (
                    deploy,
                    ["release", "rollback"],
                    ["release", "stop"],
                    ["release", "status"],
                ):
                    code, errors = command(capsys, *operation, "-e", name)
                    assert code == 3 and len(errors) == 1, (name, operation, errors)
                    assert "environment name" in errors[0], errors
            for alias in (["-e", "staging"], ["-e", "staging", "--root", str(target_root)]):
                for operation in (deploy, ["release", "rollback"], ["release", "stop"]):
                    code, errors = command(capsys, *operation, *alias)
                    assert code == 3 and len(errors) == 1, (alias, operation, errors)
                    assert "is the target of production, not of staging" in errors[0], errors

            # A run that skips the command line (a deployment, a script) meets the same lock:
            # it is keyed by the directory, not by how the environment is spelled.
            state = release(
                version="6.6.6", source=str(app), environment="staging", root=str(releases / "staging"),
                approval="never", return_state=True, **ports,
            )  # fmt: skip
            error = state.result(raise_on_failure=False)
            assert isinstance(error, DependencyError) and f"approve {run_id}" in str(error), error

            assert approve(run=run_id, reject=True, reason="not approved") == 0
            proc.communicate(timeout=180)
            assert proc.returncode == 1

        # Free again, the directory is still production's: another name is refused in the flow too.
        state = release(
            version="6.6.6", source=str(app), environment="staging", root=str(target_root), approval="never",
            return_state=True, **ports,
        )  # fmt: skip
        error = state.result(raise_on_failure=False)
        assert isinstance(error, ValidationError), error
        assert "is the target of production, not of staging" in str(error)
    finally:
        answers = watch.stop()
    assert answers and set(answers) == {(200, "2.0.0")}
    assert Target(target_root).live() == "blue" and "6.6.6" not in Target(target_root).releases()
    assert held_locks() == []


def test_a_release_that_lost_its_lock_changes_nothing_after(prefect_api, target_root, ports, app, capsys):
    from sqlalchemy import update

    from flows.records.db import session

    live_on_blue(target_root, ports, app)
    watch = RouterWatch(ports)
    try:
        with deploying("2.2.0", target_root, ports, app) as proc:
            run_id = wait_paused()
            green = instances.running_pid(target_root, "green")
            mine = lock_of(proc.pid)
            # As if the deploy ran on another machine and stopped renewing its lease: another
            # operation takes the environment over (a lease of 0 for this test, not 60 s).
            with session() as db:
                db.exec(update(OperationLock).where(OperationLock.key == mine.key).values(host="elsewhere"))
            other = acquire(mine.key, "release deploy 9.9.9", lease=0)
            assert other.took_over is not None and other.took_over.token == mine.token
            try:
                assert approve(run=run_id, reason="looked fine") == 0
                out, err = proc.communicate(timeout=180)
                assert proc.returncode == 2, (out, err)
                assert "lost the release lock" in err, err
                assert lock_of(proc.pid) is None and held_locks()[0].token == other.token
            finally:
                other.release()
    finally:
        answers = watch.stop()
    assert answers and set(answers) == {(200, "2.0.0")}  # never switched
    target = Target(target_root)
    assert (target.live(), target.version("blue"), target.version("green")) == ("blue", "2.0.0", "2.2.0")
    assert instances.running_pid(target_root, "green") == green  # neither stopped nor restarted
    assert [(r["version"], r["outcome"]) for r in history(capsys)][:1] == [("2.2.0", "aborted")]
