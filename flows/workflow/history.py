"""`history`, `show ID`, `cleanup` and `resume ID`: the recorded runs of workflow files.

Every `run` is recorded (`flows.workflow.state`); these commands read the records database
only, except `resume`, which starts a new flow run that restores the original's completed
steps instead of running them again.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_options import Json, Params, Quiet, Verbose, duration_option
from flows.console import Console
from flows.errors import EXIT_OK, OpsflowError, ValidationError
from flows.records import liveness
from flows.workflow.units import format_duration

RunId = Annotated[str, typer.Argument(help="Run id (or a unique prefix of it), as `history` shows.")]


def _fail(console: Console, err: OpsflowError) -> int:
    console.error(str(err))
    return err.exit_code


def _row(run: Any) -> dict[str, Any]:
    return {
        "id": run.id,
        "workflow": run.workflow,
        "environment": run.environment,
        "state": shown_state(run),
        "started_at": run.started_at.isoformat(timespec="seconds"),
        "ended_at": run.ended_at.isoformat(timespec="seconds") if run.ended_at else None,
        "duration": run.duration,
        "exit_code": run.exit_code,
        "resumed_from": run.resumed_from,
        "path": run.path,
        "checksum": run.checksum,
        "parameters": run.parameter_dict(),
        "message": run.message,
    }


def shown_output(step: Any) -> str | None:
    """A step's recorded output as `show` prints it. Runs record their outputs masked already;
    this also covers records written before that: a secret output's name, URL passwords."""
    from flows.secrets import MASKED, is_secret_name, scrub_text

    if step.output is None:
        return None
    if step.output_name and is_secret_name(step.output_name):
        return MASKED
    return scrub_text(step.output)


def shown_state(run: Any) -> str:
    """A run recorded as running whose process is gone on this host was killed."""
    return liveness.shown_state(run.state, run.host, run.pid)


def _find(db: Any, run_id: str) -> Any:
    from flows.records.workflows import get_run

    run = get_run(db, run_id)
    if run is None:
        raise ValidationError(f"no recorded workflow run `{run_id}` — see `opsflow history`")
    return run


def history(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Most runs to list.", min=1)] = 20,
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="Only this workflow.")] = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """List recorded workflow runs, newest first."""
    from flows.records.db import session
    from flows.records.workflows import list_runs

    console = Console(verbose=verbose, quiet=quiet)
    try:
        with session() as db:
            runs = [_row(r) for r in list_runs(db, workflow=workflow, limit=limit)]
    except OpsflowError as err:
        return _fail(console, err)
    if json_output:
        console.json(runs)
        return EXIT_OK
    for r in runs:
        took = format_duration(r["duration"]) if r["duration"] is not None else "-"
        code = "-" if r["exit_code"] is None else r["exit_code"]
        resumed = f"  (resumes {r['resumed_from']})" if r["resumed_from"] else ""
        console.out(
            f"{r['id']}  {r['started_at']}  {r['workflow']:<20} {r['environment']:<12} "
            f"{r['state']:<9} {took:>8}  exit {code}{resumed}"
        )
    if not runs:
        console.out("no recorded workflow runs")
    return EXIT_OK


def show(run_id: RunId, json_output: Json = False, verbose: Verbose = False, quiet: Quiet = False) -> int:
    """One recorded run: its header and a table of its steps."""
    from flows.records.db import session
    from flows.records.workflows import run_steps
    from flows.workflow.report import RunSummary, StepOutcome
    from flows.workflow.show import summary_table

    console = Console(verbose=verbose, quiet=quiet)
    try:
        with session() as db:
            run = _find(db, run_id)
            steps = run_steps(db, run.id)
    except OpsflowError as err:
        return _fail(console, err)
    outcomes = [
        StepOutcome(s.step, s.state, s.section, s.attempts, s.duration, s.exit_code, s.reason or "")
        for s in steps
    ]
    if json_output:
        rows = [{**vars(o), "output": shown_output(s)} for o, s in zip(outcomes, steps, strict=True)]
        console.json(_row(run) | {"steps": rows})
        return EXIT_OK
    summary = RunSummary(run.workflow, run.environment, run.id, state=run.state, message=run.message or "")
    summary.steps = outcomes
    summary.started = run.started_at.timestamp()
    summary.finished = run.ended_at.timestamp() if run.ended_at else summary.started
    console.out(f"run {run.id}  {run.path}  sha256 {run.checksum[:12]}")
    console.out(
        f"started {run.started_at.isoformat(timespec='seconds')}  parameters {json.dumps(run.parameter_dict())}"
    )
    if run.resumed_from:
        console.out(f"resumes {run.resumed_from}")
    if run.state == "running":
        console.out("not finished: still running, or killed (`opsflow resume` continues it)")
    console.out(summary_table(summary))
    return EXIT_OK


def cleanup(
    older_than: Annotated[str, typer.Option("--older-than", help="Age, e.g. 30d, 12h.")] = "30d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would go; delete nothing.")] = False,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Delete recorded workflow runs (and their steps) started longer ago than --older-than."""
    from flows.records.db import session
    from flows.records.models import utcnow
    from flows.records.workflows import delete_runs, runs_older_than

    console = Console(verbose=verbose, quiet=quiet)
    try:
        age = duration_option(older_than, "--older-than")
        with session() as db:
            old = runs_older_than(db, utcnow() - timedelta(seconds=age))
            ids = [r.id for r in old]
            steps = 0 if dry_run else delete_runs(db, ids)
    except OpsflowError as err:
        return _fail(console, err)
    result = {"dry_run": dry_run, "older_than": older_than, "runs": ids, "steps_deleted": steps}
    if json_output:
        console.json(result)
        return EXIT_OK
    verb = "would delete" if dry_run else "deleted"
    for r in old:
        console.out(f"{verb} {r.id}  {r.started_at.isoformat(timespec='seconds')}  {r.workflow}  {r.state}")
    extra = "" if dry_run else f" and {steps} step record(s)"
    console.out(f"{verb} {len(ids)} run(s){extra} older than {older_than}")
    return EXIT_OK


def resume_arguments(
    run: Any, *, force: bool, sets: dict[str, Any], resumed_as: list[Any] = ()
) -> dict[str, Any]:
    """The flow's arguments to resume `run`, or a `ValidationError` saying why it cannot be.

    `resumed_as` are the runs already resumed from this one: resuming it again would redo what
    they did, so the newest of them is the one to resume (unless --force).
    """
    from flows.workflow.state import file_checksum, masked_parameters

    if run.state == "completed":
        raise ValidationError(f"run {run.id} completed: nothing to resume")
    if resumed_as and not force:
        newest = max(resumed_as, key=lambda r: r.started_at)
        raise ValidationError(
            f"run {run.id} was already resumed as {newest.id} ({shown_state(newest)}): "
            f"resume that one instead (or pass --force)"
        )
    if liveness.owner_alive(run.state, run.host, run.pid):
        raise ValidationError(f"run {run.id} is still running (process {run.pid}) — wait for it or stop it")
    path = Path(run.path)
    if not path.is_file():
        raise ValidationError(f"run {run.id}: its workflow file {path} is gone")
    if file_checksum(path) != run.checksum and not force:
        raise ValidationError(
            f"{path} changed since run {run.id} — completed steps may no longer match; "
            "pass --force to resume anyway"
        )
    parameters = run.parameter_dict()
    masked = masked_parameters(parameters)
    other = [name for name in sets if name not in masked]
    if other:
        raise ValidationError(
            f"--set on resume gives again only the secret parameters the record masked "
            f"({', '.join(masked) or 'none'}); {', '.join(other)} would change what run {run.id} ran — "
            "start a new run to change it"
        )
    missing = [name for name in masked if name not in sets]
    if missing:
        raise ValidationError(
            f"run {run.id} had secret parameters that were not recorded: {', '.join(missing)} — "
            "pass them again with --set NAME=VALUE (or a reference, NAME=env:VAR)"
        )
    from pydantic import SecretStr

    from flows.secrets import reference

    # What --set gives again are the secrets the record masked: to the flow as SecretStr, which
    # Prefect stores obscured (a reference, holding no secret, as it is).
    given = {name: v if reference(v) or not isinstance(v, str) else SecretStr(v) for name, v in sets.items()}
    options = run.option_dict()
    return {
        "path": str(path),
        "parameters": parameters | given,
        "environment": run.environment,
        "parallel": options.get("parallel"),
        "continue_on_error": bool(options.get("continue_on_error")),
        "timeout": options.get("timeout"),
        "resume_from": run.id,
    }


def resume(
    run_id: RunId,
    force: Annotated[
        bool, typer.Option("--force", help="Resume even though the workflow file changed since.")
    ] = False,
    sets: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Secret parameters the record masked.")
    ] = None,
    params: Params = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Re-run a failed or killed workflow run from where it stopped (a new flow run)."""
    from flows.records.db import session
    from flows.records.workflows import resumed_from
    from flows.settings import get_settings
    from flows.workflow.params import parse_sets

    console = Console(verbose=verbose, quiet=quiet)
    try:
        with session() as db:
            run = _find(db, run_id)
            resumed_as = resumed_from(db, run.id)
        arguments = resume_arguments(
            run, force=force, sets=parse_sets(sets or [], params or []), resumed_as=resumed_as
        )
        settings = get_settings()
        from flows.local_server import ensure_api

        ensure_api(settings.server, settings.server_port, console.info)
    except OpsflowError as err:
        return _fail(console, err)
    console.name = run.workflow
    console.info(f"resuming run {run.id} of {run.path}")
    from flows.batch import _configure_prefect_logging

    _configure_prefect_logging(verbose=verbose, quiet=quiet)
    from flows.workflow.terminal import run_and_summarise

    return run_and_summarise(
        console, json_output=json_output, default_environment=settings.environment, **arguments
    )
