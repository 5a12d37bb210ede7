"""A killed run takes its children with it, and nothing runs a step twice at the same time.

`kill -KILL` of a running `run` or `files run` (its main process alone, or its whole process
group) used to leave the running step or processor going: it finished later, alone, and
`resume` (or the re-run) ran it a second time, overlapping it. Now every command dies with
opsflow, grandchildren included, and `resume` waits for (or refuses to overlap) a step a
killed run left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.batch import main
from flows.records.db import session
from tests.files.conftest_helpers import wait_for
from tests.records.conftest import sqlite_url  # noqa: F401

DEADLINE = 120  # seconds: generous, the machine may be busy

pytestmark = pytest.mark.slow


@pytest.fixture
def records(sqlite_url, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OPSFLOW_DATABASE_URL", sqlite_url)
    return sqlite_url


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


def _process_state(pid: int) -> str | None:
    """The state letter of a process (Z: a zombie, which runs nothing), None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2]


def _running(pid: int) -> bool:
    return _process_state(pid) not in (None, "Z")


def _group_members(group: int) -> list[int]:
    """Processes (zombies aside) of process group `group`."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(name))
    return members


def _opsflow(*args: str, log: Path) -> subprocess.Popen:
    """`python -m flows.batch ARGS` as the leader of a process group of its own."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.batch", *args],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _kill(proc: subprocess.Popen, target: str) -> None:
    if target == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _gate_script(runs: Path, pids: Path, gate: Path, work: str = "") -> str:
    """Shell lines: mark the start, start a grandchild that waits for the gate, do `work`, mark
    the end.

    The grandchild (`sh` with its `sleep`s) is what a kill of only the direct child would leave
    running; its pid and its process group (the leader's pid) are written to `pids`."""
    return textwrap.dedent(
        f"""\
        echo started >> {runs}
        sh -c 'echo "$$ $1" > {pids}; while [ ! -e {gate} ]; do sleep 0.2; done' _ $$
        {work}
        echo finished >> {runs}
        """
    )


def _wait_until_gone(pids: Path) -> None:
    """The step's grandchild and everything else of its process group end, after the kill."""
    child, group = (int(word) for word in pids.read_text().split())

    def gone() -> bool:
        return not _running(child) and not _group_members(group)

    try:
        wait_for(gone, DEADLINE, step=0.2)
    except AssertionError:
        os.killpg(group, signal.SIGKILL)  # leave nothing behind for the next test
        raise AssertionError(f"process group {group} of the killed run's command is still running") from None


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("target", ["main", "group"])
def test_a_killed_run_takes_its_step_with_it_and_resume_runs_it_once(records, tmp_path, target, capsys):
    runs, pids, gate = tmp_path / "runs", tmp_path / "pids", tmp_path / "gate"
    workflow = tmp_path / "wf.yaml"
    script = textwrap.indent(_gate_script(runs, pids, gate), " " * 6)
    workflow.write_text(f"name: killed-step\nsteps:\n  - name: slow\n    command: |\n{script}")
    proc = _opsflow("run", str(workflow), "-q", log=tmp_path / "run.log")
    try:
        wait_for(lambda: pids.exists() and pids.read_text().strip().count(" ") == 1, DEADLINE, step=0.2)
    finally:
        _kill(proc, target)
    _wait_until_gone(pids)
    assert runs.read_text() == "started\n"  # it never finished

    from flows.records.workflows import list_runs

    with session() as db:
        killed = list_runs(db, workflow="killed-step", limit=1)[0]
    gate.write_text("")
    capsys.readouterr()
    assert _cli("resume", killed.id, "--json", "-q") == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert {s["step"]: s["state"] for s in steps} == {"slow": "Completed"}
    assert runs.read_text() == "started\nstarted\nfinished\n"  # run once more, to its end


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("target", ["main", "group"])
def test_a_killed_batch_takes_its_processor_with_it_and_the_rerun_processes_the_file_once(
    records, tmp_path, target, capsys
):
    runs, pids, gate = tmp_path / "runs", tmp_path / "pids", tmp_path / "gate"
    processor = tmp_path / "slow-copy"
    processor.write_text("#!/bin/sh\nset -e\n" + _gate_script(runs, pids, gate, work='cp "$1" "$2"'))
    processor.chmod(0o755)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    command = ["files", "run", str(src), "-p", f"{processor} {{input}} {{output}}", "-o", str(out), "-q"]
    proc = _opsflow(*command, log=tmp_path / "batch.log")
    try:
        wait_for(lambda: pids.exists() and pids.read_text().strip().count(" ") == 1, DEADLINE, step=0.2)
    finally:
        _kill(proc, target)
    _wait_until_gone(pids)
    assert runs.read_text() == "started\n"
    assert not (out / "a.txt").exists()

    gate.write_text("")
    capsys.readouterr()
    assert _cli(*command[:-1], "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["processed"], summary["skipped"]) == (1, 0)
    assert runs.read_text() == "started\nstarted\nfinished\n"
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # no temporary left behind
    assert (out / "a.txt").read_text() == "a\n"


def _sleeper(env: dict[str, str] | None = None, ignore_term: bool = False) -> subprocess.Popen:
    """A process group of two: `sh` and the `sleep` it waits for."""
    trap = "trap '' TERM; " if ignore_term else ""
    return subprocess.Popen(
        ["sh", "-c", f"{trap}sleep 600 & wait"],
        start_new_session=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_the_guardian_stops_running_and_starting_commands_and_spares_ended_ones():
    """When opsflow's pipe closes, the guardian kills the group of every command registered as
    running, and of one announced but not yet registered (found by the id in its environment);
    what a command that had ended left in the background is not its business."""
    from flows.children import Guardian
    from flows.guardian import TOKEN_VAR

    guardian = Guardian(grace=1.0)
    running = _sleeper()
    starting = _sleeper(env={**os.environ, TOKEN_VAR: f"{guardian.token}.2"})
    ended = _sleeper()
    try:
        guardian.send(f"p 1\n+ 1 {running.pid}\np 2\np 3\n+ 3 {ended.pid}\n- 3\n")
        wait_for(lambda: len(_group_members(running.pid)) == 2, DEADLINE)
        wait_for(lambda: len(_group_members(starting.pid)) == 2, DEADLINE)
        guardian.close()
        for proc in (running, starting):
            proc.wait(timeout=DEADLINE)
            wait_for(lambda proc=proc: not _group_members(proc.pid), DEADLINE)
        guardian.process.wait(timeout=DEADLINE)
        assert ended.poll() is None and len(_group_members(ended.pid)) == 2
    finally:
        guardian.close()
        for proc in (running, starting, ended):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_command_that_ignores_sigterm_is_killed_and_new_runs_wait_for_the_guardian():
    from flows.children import Guardian, reapers, wait_for_reapers

    guardian = Guardian(grace=2.0)
    stubborn = _sleeper(ignore_term=True)
    try:
        wait_for(lambda: len(_group_members(stubborn.pid)) == 2, DEADLINE)
        guardian.send(f"p 1\n+ 1 {stubborn.pid}\n")
        guardian.close()
        # While it waits out the grace period it says so; a new batch waits for it.
        wait_for(lambda: guardian.process.pid in reapers() or guardian.process.poll() is not None, DEADLINE)
        assert wait_for_reapers(DEADLINE) == []
        stubborn.wait(timeout=DEADLINE)
        assert stubborn.returncode == -signal.SIGKILL
        wait_for(lambda: not _group_members(stubborn.pid), DEADLINE)
    finally:
        guardian.close()
        if stubborn.poll() is None:
            os.killpg(stubborn.pid, signal.SIGKILL)
            stubborn.wait()


@pytest.mark.usefixtures("prefect_api")
def test_resume_never_overlaps_a_step_a_killed_run_left_running(records, tmp_path, monkeypatch, capsys):
    """Had the guardian died with the run (or been killed first), the step's command goes on:
    `resume` finds it by the process group recorded when it started, waits, then refuses
    (exit 2, naming it); once it is gone, resume runs the step."""
    from flows.processes import boot_id, start_ticks
    from flows.records.workflows import StepProcessRecord, WorkflowRunRecord
    from flows.workflow import state
    from flows.workflow.state import file_checksum

    runs = tmp_path / "runs"
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: left-running\nsteps:\n  - name: slow\n    command: echo ran >> {runs}\n")
    gone = subprocess.Popen(["true"])
    gone.wait()  # the killed run's process: not running any more
    leftover = _sleeper()
    try:
        wait_for(lambda: start_ticks(leftover.pid) is not None, DEADLINE)
        with session() as db:
            db.add(
                WorkflowRunRecord(
                    id="killed-run-1",
                    workflow="left-running",
                    path=str(workflow),
                    checksum=file_checksum(workflow),
                    host=os.uname().nodename,
                    pid=gone.pid,
                )
            )
            db.flush()
            db.add(
                StepProcessRecord(
                    run_id="killed-run-1",
                    step="slow",
                    host=os.uname().nodename,
                    boot_id=boot_id(),
                    pgid=leftover.pid,
                    start_ticks=start_ticks(leftover.pid),
                )
            )
        monkeypatch.setattr(state, "LEFTOVER_WAIT_SECONDS", 0.5)
        assert _cli("resume", "killed-run-1", "-q") == 2
        message = capsys.readouterr().err
        assert "`slow` of killed run killed-run-1 is still running" in message
        assert f"process group {leftover.pid}" in message
        assert not runs.exists()
        # A plain re-run of the same workflow does not overlap it either.
        assert _cli("run", str(workflow), "-q") == 2
        assert not runs.exists()
    finally:
        os.killpg(leftover.pid, signal.SIGKILL)
        leftover.wait()
    assert _cli("resume", "killed-run-1", "-q") == 0
    assert runs.read_text() == "ran\n"
    with session() as db:  # the killed run's row is gone with its process, the new run's ended
        assert db.query(StepProcessRecord).count() == 0


def test_a_step_records_its_process_group_while_it_runs(records, tmp_path, write_workflow):
    """Recorder side: the row names the running command's group and is deleted when it ends."""
    from flows.processes import group_alive
    from flows.records.workflows import StepProcessRecord
    from flows.workflow.state import Recorder

    class Logger:
        def warning(self, message: str) -> None:
            raise AssertionError(message)

    recorder = Recorder.start(
        "run-rec-1",
        workflow="w",
        path=str(write_workflow("name: w\nsteps: []\n")),
        environment="development",
        parameters={},
        options={},
        resumed_from=None,
        logger=Logger(),
    )
    proc = _sleeper()
    try:
        ended = recorder.command_started("slow", proc.pid)
        with session() as db:
            (row,) = db.query(StepProcessRecord).all()
        assert (row.run_id, row.step, row.pgid) == ("run-rec-1", "slow", proc.pid)
        assert group_alive(row.pgid, row.start_ticks, row.boot_id)
        assert not group_alive(row.pgid, (row.start_ticks or 0) + 1, row.boot_id)  # another process
        assert not group_alive(row.pgid, row.start_ticks, "another-boot")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + DEADLINE
    while group_alive(row.pgid, row.start_ticks, row.boot_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(row.pgid, row.start_ticks, row.boot_id)
    ended()
    with session() as db:
        assert db.query(StepProcessRecord).count() == 0
