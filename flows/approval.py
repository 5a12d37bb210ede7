"""Manual approval: a flow run pauses until an operator approves or rejects it.

Built on Prefect's pause/input: the run goes to `Paused` and saves the schema of
`ApprovalDecision`, so the Prefect UI shows a form (approve yes/no, reason, who); `opsflow approve
RUN [--reject --reason ...]` resumes it with the same input from a terminal. No decision within
the timeout is a rejection: the run is put back to Running so its rollback can still run tasks.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from flows.workflow.notifications import run_link
from flows.workflow.units import format_duration, parse_duration

DEFAULT_TIMEOUT = "1h"


def approval_timeout(value: str | float | None = None) -> float:
    """Seconds to wait for a decision: the argument, else OPSFLOW_APPROVAL_TIMEOUT, else 1h."""
    text = value if value is not None else os.environ.get("OPSFLOW_APPROVAL_TIMEOUT", DEFAULT_TIMEOUT)
    seconds = parse_duration(text if isinstance(text, int | float) else str(text))
    if seconds <= 0:
        raise ValueError(f"approval timeout must be positive, got {text!r}")
    return seconds


@dataclass(frozen=True)
class Approval:
    approved: bool
    reason: str = ""
    approver: str = ""
    timed_out: bool = False

    def describe(self) -> str:
        verb = "approved" if self.approved else "rejected"
        who = f" by {self.approver}" if self.approver else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{verb}{who}{why}"


def decision_input(*, reject: bool, reason: str, approver: str | None) -> dict:
    """The input `approve` sends: what the UI's form sends, filled from the command line."""
    return {"approve": not reject, "reason": reason, "approver": approver or getpass.getuser()}


def _decision_model():
    from prefect.input import RunInput

    class ApprovalDecision(RunInput):
        """An operator's decision on a paused opsflow run."""

        approve: bool = Field(description="Approve (true) or reject (false).")
        reason: str = Field("", description="Why; recorded with the run and sent in notifications.")
        approver: str = Field("", description="Who decides (your name).")

    return ApprovalDecision


def request_approval(
    what: str,
    *,
    timeout: float,
    key: str,
    announce: Callable[[str], None] | None = None,
) -> Approval:
    """Pause the current flow run until a decision arrives or `timeout` seconds pass.

    `what` names what waits ("switch traffic to green (v2) in production"); `announce` gets a
    line with the UI link and the approve command (a requires_approval notification).
    """
    from prefect import get_run_logger
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run
    from prefect.runtime import flow_run

    logger = get_run_logger()
    run_id = str(flow_run.id)
    key = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")  # Prefect's input keys are slugs
    link = run_link(run_id)
    where = f"the Prefect UI ({link})" if link else "the Prefect UI"
    line = (
        f"waiting up to {format_duration(timeout)} for approval to {what}: approve in {where} "
        f"or run `python -m flows.batch approve {run_id}` (`--reject --reason ...` to reject)"
    )
    logger.warning(line)
    if announce is not None:
        announce(line)
    form = _decision_model().with_initial_data(
        description=f"**Approve {what}?** No decision within {format_duration(timeout)} rejects it.",
        approve=True,
    )
    try:
        decision = pause_flow_run(
            wait_for_input=form, timeout=max(1, round(timeout)), poll_interval=2, key=key
        )
    except FlowPauseTimeout:
        _running_again(run_id)
        approval = Approval(False, f"no decision within {format_duration(timeout)}", timed_out=True)
    else:
        approval = Approval(bool(decision.approve), decision.reason.strip(), decision.approver.strip())
    (logger.info if approval.approved else logger.warning)(f"{what}: {approval.describe()}")
    return approval


def _running_again(run_id: str) -> None:
    """After a pause timed out the run is still Paused; tasks (the rollback) need it Running."""
    from prefect import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Running(message="approval timed out: rejected"), force=True)
