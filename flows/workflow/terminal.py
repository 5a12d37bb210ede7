"""`run` at a terminal: the flow in this process, its live view, its summary and exit code."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from flows.errors import ConnectionFailure, OpsflowError, StepFailure
from flows.terminal_runs import terminal_run
from flows.workflow.report import RunSummary
from flows.workflow.run import run_workflow
from flows.workflow.shell import terminate_all


def run_and_summarise(console: Any, *, json_output: bool, plan: Any = None, **flow_kwargs: Any) -> int:
    """Run the flow in this process, print its summary, return the exit code."""
    from flows.workflow.show import summary_table

    try:
        with terminal_view(plan, console), terminal_run():
            state = run_workflow(**flow_kwargs, return_state=True)
    except Exception as exc:
        terminate_all()
        unreachable = _unreachable_api(exc)
        if unreachable is None:
            raise
        console.error(unreachable)
        return ConnectionFailure.exit_code
    except BaseException:
        # Ctrl-C or a termination signal: the commands run in their own sessions and would
        # outlive us (and keep this process waiting for its threads), so stop them first.
        stopped = terminate_all()
        if stopped:
            console.warning(f"interrupted: stopped {stopped} running command(s)")
        raise
    value = state.result(raise_on_failure=False)
    if isinstance(value, OpsflowError):
        console.error(str(value))
        return value.exit_code
    if not isinstance(value, dict):
        console.error(f"the flow run ended {state.name}: {state.message or value}")
        return StepFailure.exit_code
    summary = RunSummary.from_dict(value)
    if json_output:
        console.json(summary.to_dict())
    else:
        console.out(summary_table(summary))
    return summary.exit_code


@contextlib.contextmanager
def terminal_view(plan: Any, console: Any) -> Iterator[None]:
    """On a terminal, the live view replaces Prefect's console handler for the run's duration."""
    if plan is None or not sys.stderr.isatty() or console.quiet:
        yield
        return
    from flows.workflow.live import LiveView

    root = logging.getLogger()
    prefect_consoles = [h for h in root.handlers if type(h).__name__ == "PrefectConsoleHandler"]
    view = LiveView(plan, level=logging.DEBUG if console.verbose else logging.INFO)
    for handler in prefect_consoles:
        root.removeHandler(handler)
    root.addHandler(view.handler)
    try:
        with view:
            yield
    finally:
        root.removeHandler(view.handler)
        for handler in prefect_consoles:
            root.addHandler(handler)


def _unreachable_api(exc: BaseException) -> str | None:
    """A one-line message when `exc` means the Prefect API could not be reached."""
    import httpx

    for cause in (exc, exc.__cause__, exc.__context__):
        if isinstance(cause, httpx.TransportError) or (
            isinstance(cause, RuntimeError) and "Failed to reach API" in str(cause)
        ):
            from prefect.settings import PREFECT_API_URL

            return (
                f"cannot reach the Prefect API at {PREFECT_API_URL.value()} "
                "— start it, or unset PREFECT_API_URL to use a local server"
            )
    return None
