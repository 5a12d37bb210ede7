"""Running a procedure flow from the command line: Prefect API, the run, its report, its exit code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flows.console import Console
from flows.errors import EXIT_FAILURE, ConnectionFailure, OpsflowError

Render = Callable[[Console, dict[str, Any]], None]


def default_render(console: Console, outcome: dict[str, Any]) -> None:
    if outcome.get("message"):
        console.out(outcome["message"])


def run_procedure(
    console: Console,
    flow: str,
    *,
    json_output: bool = False,
    verbose: bool = False,
    quiet: bool = False,
    render: Render = default_render,
    **parameters: Any,
) -> int:
    """Run the flow `module:function` in this process against the local Prefect API; print the
    outcome; return the exit code. Prefect is imported only after its API and logging are set."""
    import importlib

    from flows.batch import _configure_prefect_logging
    from flows.local_server import ensure_api
    from flows.settings import get_settings

    settings = get_settings()
    try:
        ensure_api(settings.server, settings.server_port, console.info)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    _configure_prefect_logging(verbose=verbose, quiet=quiet)
    from flows.terminal_runs import terminal_run
    from flows.workflow.terminal import _unreachable_api

    module, _, name = flow.partition(":")
    flow_fn = getattr(importlib.import_module(module), name)
    try:
        with terminal_run():
            state = flow_fn(**parameters, return_state=True)
    except Exception as exc:
        unreachable = _unreachable_api(exc)
        if unreachable is None:
            raise
        console.error(unreachable)
        return ConnectionFailure.exit_code
    value = state.result(raise_on_failure=False)
    outcome = getattr(value, "outcome", None)
    if isinstance(value, dict):
        outcome = value
    if outcome is not None:
        console.json(outcome) if json_output else render(console, outcome)
        code = int(outcome.get("exit_code", EXIT_FAILURE))
        if code not in (0, 10) and not json_output:
            console.error(outcome.get("message") or f"{outcome.get('procedure')} failed")
        return code
    if isinstance(value, OpsflowError):
        console.error(str(value))
        if json_output:
            console.json({"exit_code": value.exit_code, "message": str(value)})
        return value.exit_code
    console.error(f"the flow run ended {state.name}: {state.message or value}")
    return EXIT_FAILURE
