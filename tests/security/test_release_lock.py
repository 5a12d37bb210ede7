"""A release never puts an unapproved version live.

Production live on blue (2.0.0); `release deploy 2.2.0` paused for approval with green already
serving 2.2.0; `release rollback` then switched traffic to green (the unapproved 2.2.0) and
exited 0, and rejecting the paused release afterwards stopped green and left `current -> green`:
the router answered 502. Now deploy, rollback and stop hold the environment's lock (a second
one is refused, exit 2, naming the holder), and a release that does not go live always puts
`current` back to the color that was live before it. Real release target, router, instances,
Prefect server (pause/input) and records database throughout.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from flows.approve import approve
from flows.batch import main
from flows.errors import DependencyError
from flows.records.locks import holder_of
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
    assert holder_of(f"release:{ENV}") is None  # the rejected release let go of the environment


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


def test_the_lock_of_a_killed_release_is_taken_over(prefect_api, target_root, ports, app):
    live_on_blue(target_root, ports, app)
    with deploying("2.2.0", target_root, ports, app) as proc:
        wait_paused()
        holder = holder_of(f"release:{ENV}")
        assert holder is not None and holder.pid == proc.pid and holder.waiting_for == "approval"
    # Killed (SIGKILL) while it waited: it never released its lock; its paused run is cancelled.

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
    assert holder_of(f"release:{ENV}") is None
