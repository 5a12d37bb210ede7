"""`files history`, `files report` and `files dlq ...`: what the records database says."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from flows.cli_options import Json, Quiet, Verbose
from flows.console import Console
from flows.durations import MAX_DURATION_SECONDS
from flows.errors import EXIT_CONFIG, EXIT_OK, OpsflowError, ValidationError
from flows.files.cli import dlq_app, files_app
from flows.records.liveness import shown_state


@files_app.command("history")
def history(
    limit: Annotated[int, typer.Option(help="How many jobs.", min=1)] = 20,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Recent batch jobs, newest first."""
    from flows.records import files as store

    return _listing(
        Console("files", verbose=verbose, quiet=quiet),
        lambda db: store.list_jobs(db, limit=limit),
        lambda job: (
            f"{job['id'][:12]}  {job['created_at'][:19]}  {job['status']:<11} {job['total']:>6} files  "
            f"{job['processed']} processed, {job['skipped']} unchanged, {job['dead_lettered']} dead-lettered"
        ),
        "no batch jobs yet",
        json_output,
    )


def _listing(console: Console, fetch: Any, line: Any, empty: str, json_output: bool) -> int:
    """Rows from the records database as JSON or one line each."""
    from flows.files import interrupted
    from flows.records.db import session

    try:
        with session() as db:
            interrupted.reconcile(db)
            rows = [_record_dict(row) for row in fetch(db)]
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    if json_output:
        console.json(rows)
        return EXIT_OK
    for row in rows:
        console.out(line(row))
    if not rows:
        console.out(empty)
    return EXIT_OK


@files_app.command("report")
def report(
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix of it).")],
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """One job: its counters and each file's outcome."""
    from flows.records import files as store
    from flows.records.db import session

    console = Console("files", verbose=verbose, quiet=quiet)
    from flows.files import interrupted

    try:
        with session() as db:
            interrupted.reconcile(db)
            found = store.get_job(db, job)
            if found is None:
                raise ValidationError(f"no batch job {job!r} (see `files history`)")
            data = _record_dict(found)
            data["files"] = [
                {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.model_dump().items()}
                for r in store.job_results(db, found.id)
            ]
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    if json_output:
        console.json(data)
        return EXIT_OK
    console.out(json.dumps({k: v for k, v in data.items() if k != "files"}, indent=2, default=str))
    for row in data["files"]:
        console.out(
            f"{row['status']:<13} {row['attempts']:>2}  {row['input_path']}"
            + (f"  — {row['error']}" if row["error"] else "")
        )
    return EXIT_OK


def _record_dict(job: Any) -> dict[str, Any]:
    row = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in job.model_dump().items()}
    if "status" in row and "pid" in row:  # a job: one still `running` whose process is gone was killed
        row["status"] = shown_state(row["status"], row["host"], row["pid"])
    return row


@dlq_app.command("list")
def dlq_list(
    limit: Annotated[int, typer.Option(help="How many items.", min=1)] = 100,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Files in the dead-letter queue."""
    from flows.records import files as store

    return _listing(
        Console("files", verbose=verbose, quiet=quiet),
        lambda db: store.list_dead_letters(db, limit=limit),
        lambda item: (
            f"{item['id']:>5}  retried {item['retry_count']}x  {item['input_path']}  — {item['error']}"
        ),
        "the dead-letter queue is empty",
        json_output,
    )


@dlq_app.command("show")
def dlq_show(
    item_id: Annotated[int, typer.Argument(help="Dead-letter item id.")],
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """One dead-letter item: error, attempts, processors tried, timestamps."""
    from flows.records import files as store
    from flows.records.db import session

    console = Console("files", verbose=verbose, quiet=quiet)
    with session() as db:
        item = store.get_dead_letter(db, item_id)
        data = _record_dict(item) if item else None
    if data is None:
        console.error(f"no dead-letter item {item_id} (see `files dlq list`)")
        return EXIT_CONFIG
    if json_output:
        console.json(data)
    else:
        for key, value in data.items():
            console.out(f"{key:>15}: {value}")
    return EXIT_OK


@dlq_app.command("reprocess")
def dlq_reprocess(
    ids: Annotated[list[int] | None, typer.Argument(help="Items to retry (default: all).")] = None,
    processor: Annotated[
        str | None, typer.Option("--processor", "-p", help="Use this processor instead of the item's.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds one attempt may take.", min=0, max=MAX_DURATION_SECONDS)
    ] = 300.0,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Retry dead-letter items: success removes an item, failure increments its retry count."""
    from flows.batch import _configure_prefect_logging
    from flows.local_server import ensure_api
    from flows.settings import get_settings

    console = Console("files", verbose=verbose, quiet=quiet)
    settings = get_settings()
    try:
        ensure_api(settings.server, settings.server_port, console.info)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    _configure_prefect_logging(verbose=verbose, quiet=quiet)
    from flows.files.recover import reprocess_dead_letters
    from flows.terminal_runs import terminal_run

    with terminal_run():
        state = reprocess_dead_letters(
            ids=ids or None, processor=processor, timeout=timeout or None, return_state=True
        )
    value = state.result(raise_on_failure=False)
    if isinstance(value, OpsflowError):
        console.error(str(value))
        return value.exit_code
    if json_output:
        console.json(value)
    else:
        for result in value["results"]:
            console.out(
                f"{result['id']:>5}  {result['status']}"
                + (f"  — {result.get('error')}" if result.get("error") else "")
            )
        console.out(f"{value['resolved']} resolved, {value['failed']} failed again")
    return 1 if value["failed"] else EXIT_OK
