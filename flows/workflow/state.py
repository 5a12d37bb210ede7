"""Saved state of workflow runs: the run's record as it goes, and what `resume` restores.

The flow writes its `workflow_run` row when it starts and a `workflow_step` row as each step
settles (`Recorder`), so a killed run keeps what it finished. `restore` puts a resumed run's
completed steps back: settled in the dispatcher, their captured outputs in the template
context, shown as `Restored` in the summary. A records database that cannot be reached costs
the run its history (one warning), never the run itself.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from flows import processes
from flows.errors import DependencyError, OpsflowError
from flows.secrets import MASKED, is_secret_name, safe_parameters, was_scrubbed
from flows.user_files import read_user_bytes
from flows.workflow.dispatch import Outcome
from flows.workflow.report import RunSummary, StepOutcome

if TYPE_CHECKING:
    from flows.workflow.dispatch import Dispatcher
    from flows.workflow.execute import WorkflowRun

#: Captured output kept per step; longer output is cut (and then not restorable as is).
OUTPUT_CAP = 64 * 1024
#: How long a run waits for the commands a killed run left running to be stopped (by the
#: killed process's guardian) before it refuses to start.
LEFTOVER_WAIT_SECONDS = 30.0

_active: dict[str, Recorder] = {}  # by flow run id, so `_finish` can close the run's record
_active_lock = threading.Lock()


def file_checksum(path: str | Path) -> str:
    return hashlib.sha256(read_user_bytes(path)).hexdigest()


def masked_parameters(parameters: dict[str, Any]) -> list[str]:
    """Names of recorded parameters whose values were masked as secrets, or had a password in a
    URL removed: `resume` needs them again."""

    def masked(value: Any) -> bool:
        if isinstance(value, list):
            return any(masked(item) for item in value)
        return isinstance(value, str) and (value == MASKED or was_scrubbed(value))

    return sorted(name for name, value in parameters.items() if masked(value))


class Recorder:
    """Writes one run's rows; does nothing when saving state is off or the database failed."""

    def __init__(self, run_id: str, logger: Any, enabled: bool = True) -> None:
        self.run_id, self.logger, self.enabled = run_id, logger, enabled
        self.recorded: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    @classmethod
    def start(
        cls,
        run_id: str,
        *,
        workflow: str,
        path: str,
        environment: str,
        parameters: dict[str, Any],
        options: dict[str, Any],
        resumed_from: str | None,
        logger: Any,
        enabled: bool = True,
        is_secret: Callable[[str], bool] = is_secret_name,
    ) -> Recorder:
        """Write the run's row: secret parameters as `**********` (or the reference they came
        from, which `resume` can resolve again), passwords in URLs removed."""
        from flows.records.models import to_json
        from flows.records.workflows import WorkflowRunRecord, start_run

        recorder = cls(run_id, logger, enabled)
        row = WorkflowRunRecord(
            id=run_id,
            workflow=workflow,
            path=str(Path(path).resolve()),
            checksum=file_checksum(path),
            environment=environment,
            parameters=to_json(safe_parameters(parameters, is_secret)),
            options=to_json(options),
            resumed_from=resumed_from,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        recorder.write(lambda db: start_run(db, row))
        with _active_lock:
            _active[run_id] = recorder
        return recorder

    def write(self, change: Any) -> None:
        if not self.enabled:
            return
        from flows.records.db import session

        try:
            with self.lock, session() as db:
                change(db)
        except (OpsflowError, SQLAlchemyError) as exc:
            self.enabled = False
            self.logger.warning(f"run history not saved (resume will not be possible): {exc}")

    def settled(
        self,
        outcome: StepOutcome,
        run: WorkflowRun | None = None,
        value: Any = None,
        saved: tuple[str | None, str | None] = (None, None),
    ) -> None:
        """Record a step as it settles; a completed main step keeps its captured output
        (`saved`: the output a restored step had, so the new run can be resumed in turn), with
        the run's secrets masked in it, or all of it masked when it is a secret output."""
        from flows.records.workflows import WorkflowStepRecord, add_step

        name, output = saved
        node = run.graph.nodes.get(outcome.step) if run is not None and outcome.section == "steps" else None
        if node is not None and node.step.capture_output is not None:
            name = node.step.capture_output
            if outcome.state == "Completed" and isinstance(value, dict):
                output = str(value.get("stdout", "")).strip()
                output = MASKED if node.step.captures_secret else run.mask(output)[:OUTPUT_CAP]
        self.recorded.add((outcome.step, outcome.section))
        row = WorkflowStepRecord(
            run_id=self.run_id,
            step=outcome.step,
            section=outcome.section,
            state=outcome.state,
            attempts=outcome.attempts,
            duration=outcome.duration,
            exit_code=outcome.exit_code,
            reason=(run.mask(outcome.reason) if run is not None else outcome.reason) or None,
            output_name=name,
            output=output,
        )
        self.write(lambda db: add_step(db, row))

    def command_started(self, step: str, pid: int) -> Callable[[], None]:
        """Record a step's command (its process group) as running; returns what records its end."""
        from flows.records.workflows import StepProcessRecord

        if not self.enabled:
            return lambda: None
        row = StepProcessRecord(
            run_id=self.run_id,
            step=step,
            host=socket.gethostname(),
            boot_id=processes.boot_id(),
            pgid=pid,
            start_ticks=processes.start_ticks(pid),
        )
        self.write(lambda db: db.add(row))

        def ended() -> None:
            if row.id is not None:
                self.write(lambda db: _forget_processes(db, [row.id]))

        return ended

    def finish(self, summary: RunSummary) -> None:
        """Record the steps that settled without running (skipped, not run), then the outcome."""
        from flows.records.workflows import finish_run

        for outcome in summary.steps:
            if (outcome.step, outcome.section) not in self.recorded:
                self.settled(outcome)
        self.write(
            lambda db: finish_run(db, self.run_id, exit_code=summary.exit_code, message=summary.message)
        )


def finish(summary: RunSummary) -> None:
    """Close the record of the run this summary belongs to (if it is being recorded)."""
    with _active_lock:
        recorder = _active.pop(summary.workflow_id, None)
    if recorder is not None:
        recorder.finish(summary)


def abandon(run_id: str, err: OpsflowError) -> None:
    """Close the record of a run that ended on an error before it had a summary."""
    with _active_lock:
        recorder = _active.pop(run_id, None)
    if recorder is not None:
        from flows.records.workflows import finish_run

        recorder.write(lambda db: finish_run(db, run_id, exit_code=err.exit_code, message=str(err)))


def _forget_processes(db: Any, ids: list[int]) -> None:
    from sqlalchemy import delete
    from sqlmodel import col

    from flows.records.workflows import StepProcessRecord

    db.exec(delete(StepProcessRecord).where(col(StepProcessRecord.id).in_(ids)))


def _owner_alive(run: Any) -> bool:
    """Is the process that ran `run` (on this host) still running it? This process counts:
    a row of its own is a command it runs right now."""
    from flows.records import liveness

    if run is None or run.state != "running":
        return False
    return run.pid == os.getpid() or liveness.process_alive(run.pid)


def left_running(workflow: str, resume_from: str | None = None) -> list[Any]:
    """Step commands that killed runs of `workflow` (or the run `resume_from`) left running on
    this machine. Rows of killed runs whose commands are gone are deleted on the way."""
    from flows.records.db import session
    from flows.records.workflows import step_processes

    here = socket.gethostname()
    alive, gone = [], []
    with session() as db:
        for row, run in step_processes(db):
            if row.host != here or _owner_alive(run):
                continue  # elsewhere (cannot be checked from here), or a run still going
            if not processes.group_alive(row.pgid, row.start_ticks, row.boot_id):
                gone.append(row.id)
            elif run is None or run.workflow == workflow or run.id == resume_from:
                alive.append(row)
        if gone:
            _forget_processes(db, gone)
    return alive


def await_leftovers(workflow: str, resume_from: str | None, logger: Any) -> None:
    """Never overlap a step a killed run left running: wait (a killed run's guardian stops its
    commands within seconds), then refuse with a DependencyError naming what still runs."""
    try:
        left = left_running(workflow, resume_from)
    except (OpsflowError, SQLAlchemyError):
        return  # no records to read: the run says so when it tries to write its own
    if not left:
        return
    steps = ", ".join(f"`{row.step}` of run {row.run_id}" for row in left)
    logger.warning(f"waiting for {steps}, left running by a killed run, to stop")
    deadline = time.monotonic() + LEFTOVER_WAIT_SECONDS
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [r for r in left if processes.group_alive(r.pgid, r.start_ticks, r.boot_id)]
    if left:
        row = left[0]
        raise DependencyError(
            f"step `{row.step}` of killed run {row.run_id} is still running "
            f"(process group {row.pgid} on {row.host}); running it again would overlap it — "
            f"stop it (kill -- -{row.pgid}) or let it finish, then try again"
        )


def restore(run: WorkflowRun, dispatcher: Dispatcher, original_id: str) -> list[str]:
    """Settle the steps `original_id` completed as restored, with their outputs; returns them."""
    from flows.records.db import session
    from flows.records.workflows import done_steps

    with session() as db:
        rows = done_steps(db, original_id)
    restored = []
    for row in rows:
        if row.step not in run.graph.nodes or row.step not in dispatcher.pending:
            continue  # a step of the old file (--force) or already settled
        if row.output is not None and MASKED in row.output:
            # Its output held a secret, which the record never kept: later steps need it whole.
            run.logger.info(f"`{row.step}` runs again: its captured output `{row.output_name}` held a secret")
            continue
        if row.output_name is not None and row.output is not None:
            run.context["outputs"][row.output_name] = row.output
        dispatcher.finish(row.step, Outcome.COMPLETED)
        run.completion_order.append(row.step)
        outcome = run.summary.add(
            StepOutcome(row.step, "Restored", exit_code=row.exit_code, reason=f"completed in {original_id}")
        )
        run.recorder.settled(outcome, saved=(row.output_name, row.output))
        restored.append(row.step)
    # A group all of whose steps were restored ran its hooks in the original run.
    for group, node in run.graph.nodes.items():
        if node.is_group and all(leaf in restored for leaf in run.graph.leaves_under(group)):
            run.groups_done.add(group)
    if restored:
        run.logger.info(f"resuming {original_id}: restored {len(restored)} completed step(s)")
    return restored
