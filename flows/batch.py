"""`python -m flows.batch` (also installed as `opsflow`): the command line.

`validate`, `plan`, `list` and `run --dry-run` never import Prefect, so they answer at once.
Errors become one line and the exit code of seed 003; only this module turns them so.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer

from flows.approve import approve
from flows.cli_options import Json, Params, Quiet, Verbose, duration_option
from flows.console import Console
from flows.errors import EXIT_CONFIG, EXIT_DRY_RUN, EXIT_OK, OpsflowError, ValidationError
from flows.files.cli import files_app
from flows.health.cli import health_app
from flows.limits import MAX_PARALLEL
from flows.maintenance.cli import db_app
from flows.maintenance.cli_cache import cache_app
from flows.release.cli import release_app
from flows.schedule import schedule_app
from flows.trigger import trigger
from flows.workflow.breakers_cli import breakers_app
from flows.workflow.templates_cli import create, template_app, templates

app = typer.Typer(
    name="opsflow",
    help="Operations procedures as Prefect flows. Exit codes: 0 success, 1 step failure, "
    "2 dependency, 3 configuration/validation, 4 connection, 5 permission, 10 dry run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
server_app = typer.Typer(
    help="The local Prefect server opsflow reuses for fast local runs.", no_args_is_help=True
)
app.add_typer(server_app, name="server")
app.add_typer(files_app, name="files")
app.add_typer(db_app, name="db")
app.add_typer(cache_app, name="cache")
app.add_typer(health_app, name="health")
app.add_typer(schedule_app, name="schedule")
app.add_typer(release_app, name="release")
app.add_typer(template_app, name="template")
app.add_typer(breakers_app, name="breakers")
app.command()(templates)
app.command()(create)
app.command()(trigger)
from flows.backfill import backfill  # noqa: E402 - kept beside its registration

app.command()(backfill)
app.command()(approve)
from flows.workflow.history import cleanup, history, resume, show  # noqa: E402

for _command in (history, show, cleanup, resume):
    app.command()(_command)

WorkflowFile = Annotated[Path, typer.Argument(help="Workflow file.", show_default=False)]
Env = Annotated[
    str | None, typer.Option("--env", "-e", help="Target environment (the `environment` parameter).")
]
Parallel = Annotated[int | None, typer.Option(help="Most steps running at once.", min=1, max=MAX_PARALLEL)]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Parameters: key=value[,key2=value2]; repeatable; lists as a,b or JSON."
    ),
]


def _fail(console: Console, err: OpsflowError) -> int:
    console.error(str(err))
    for detail in getattr(err, "details", [])[1:]:
        console.error(detail)
    return err.exit_code


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Workflow files to check.", show_default=False)],
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="Values the run will be given (key=value, repeatable): names the templates use "
            "without declaring them must be among these.",
        ),
    ] = None,
    params: Params = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Check workflow files without running anything: schema, references, cycles, templates,
    parameter defaults, names the templates use, what the template sandbox refuses."""
    from flows.workflow.check import analyse
    from flows.workflow.load import load_workflow
    from flows.workflow.params import parse_sets

    console = Console(verbose=verbose, quiet=quiet)
    results, code = [], EXIT_OK
    try:
        values = parse_sets(sets or [], params or [])
    except OpsflowError as err:
        return _fail(console, err)
    for file in files:
        try:
            loaded = load_workflow(file)
            analysis = analyse(loaded, values)
        except OpsflowError as err:
            code = max(code, err.exit_code)
            details = getattr(err, "details", None) or [str(err)]
            results.append({"file": str(file), "valid": False, "error": str(err), "problems": details})
            if not json_output:
                for line in details:
                    console.error(line)
            continue
        steps = len(analysis.graph.leaves)
        results.append(
            {
                "file": str(file),
                "valid": True,
                "workflow": loaded.spec.name,
                "steps": steps,
                "warnings": analysis.warnings,
            }
        )
        if not json_output:
            for warning in analysis.warnings:
                console.warning(warning)
            if not quiet:
                console.out(f"ok  {file}  ({loaded.spec.name}, {steps} step{'s' if steps != 1 else ''})")
    if json_output:
        console.json(results)
    return code


def _prepare(
    file: Path, sets: list[str], params: list[str], env: str | None, parallel: int | None, workflow_id: str
):
    """Load, analyse, bind and plan: everything before Prefect, so bad input fails fast."""
    from flows.masking import Masker, masked_error
    from flows.settings import get_settings
    from flows.workflow.check import analyse
    from flows.workflow.load import load_workflow
    from flows.workflow.params import bind, parse_sets
    from flows.workflow.plan import plan_workflow

    settings = get_settings()
    loaded = load_workflow(file)
    values = parse_sets(sets, params)
    analysis = analyse(loaded, values)
    bound = bind(
        loaded,
        values,
        environment=env,
        default_environment=settings.environment,
        workflow_id=workflow_id,
    )
    bound.warnings[:0] = analysis.warnings
    mask = Masker(bound.secret_values())  # what the run will mask, as run.py builds it
    try:
        plan = plan_workflow(loaded, analysis.graph, bound, parallel=parallel or settings.parallel)
    except OpsflowError as err:  # a step's `when` may quote what a secret made
        raise masked_error(err, mask) from None
    return loaded, values, plan, settings, mask


def _print_plan(console: Console, plan, mask, *, json_output: bool, dry_run: bool = False) -> None:
    """The plan with secret values masked (commands are shown rendered)."""
    from flows.masking import mask_data
    from flows.workflow.show import plan_text

    if json_output:
        console.json(mask_data(plan.to_dict() | ({"dry_run": True} if dry_run else {}), mask))
    else:
        console.out(mask(plan_text(plan, dry_run=dry_run)))


@app.command()
def plan(
    file: WorkflowFile,
    sets: Sets = None,
    params: Params = None,
    env: Env = None,
    parallel: Parallel = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Show what a run would do: order, groups, limits, rendered commands, skips, hooks."""
    console = Console(verbose=verbose, quiet=quiet)
    try:
        _, _, the_plan, _, mask = _prepare(file, sets or [], params or [], env, parallel, "<workflow_id>")
    except OpsflowError as err:
        return _fail(console, err)
    _print_plan(console, the_plan, mask, json_output=json_output)
    return EXIT_OK


@app.command()
def run(
    file: WorkflowFile,
    sets: Sets = None,
    params: Params = None,
    env: Env = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the rendered plan and exit 10; run nothing.")
    ] = False,
    parallel: Parallel = None,
    continue_on_error: Annotated[
        bool,
        typer.Option("--continue-on-error", help="Keep running steps that do not depend on a failed one."),
    ] = False,
    timeout: Annotated[str | None, typer.Option(help="Whole-run timeout, e.g. 300, 30s, 5m, 1h.")] = None,
    save_state: Annotated[
        bool,
        typer.Option(
            "--save-state/--no-save-state",
            help="Record the run and its steps (history, resume); on by default.",
        ),
    ] = True,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Run a workflow as a Prefect flow (one task run per step) and print its summary."""
    console = Console(verbose=verbose, quiet=quiet)
    try:
        limit = duration_option(timeout, "--timeout")
        if limit is not None and limit <= 0:
            raise ValidationError(f"--timeout: a timeout must be more than 0 seconds, got {timeout!r}")
        loaded, values, the_plan, settings, mask = _prepare(
            file, sets or [], params or [], env, parallel, f"dry-run-{uuid.uuid4().hex[:8]}"
        )
    except OpsflowError as err:
        return _fail(console, err)
    console.name = loaded.spec.name
    if dry_run:
        _print_plan(console, the_plan, mask, json_output=json_output, dry_run=True)
        return EXIT_DRY_RUN
    try:
        from flows.local_server import ensure_api

        ensure_api(settings.server, settings.server_port, console.info)
    except OpsflowError as err:
        return _fail(console, err)
    _configure_prefect_logging(verbose=verbose, quiet=quiet)
    from flows.workflow.params import for_flow
    from flows.workflow.terminal import run_and_summarise

    return run_and_summarise(
        console,
        plan=the_plan,
        path=str(file.resolve()),
        parameters=for_flow(loaded, values),
        environment=env,
        parallel=parallel or settings.parallel,
        continue_on_error=continue_on_error,
        timeout=timeout,
        default_environment=settings.environment,
        json_output=json_output,
        save_state=save_state,
    )


@app.command("list")
def list_workflows(
    directory: Annotated[
        Path | None, typer.Argument(help="Directory of workflow files (default: OPSFLOW_WORKFLOWS_DIR).")
    ] = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """List workflow files with their description and parameters."""
    from flows.settings import get_settings
    from flows.workflow.load import load_workflow

    console = Console(verbose=verbose, quiet=quiet)
    folder = directory or get_settings().workflows_dir
    if not folder.is_dir():
        return _fail(console, ValidationError("not a directory", where=str(folder)))
    entries = []
    for file in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            spec = load_workflow(file).spec
        except OpsflowError as err:
            entries.append({"file": str(file), "valid": False, "error": str(err)})
            continue
        params = [
            {
                "name": p.name,
                "type": p.kind,
                "default": p.shown_default,
                "required": p.required,
                "secret": p.is_secret,
                "description": p.description,
            }
            for p in spec.parameters
        ]
        entries.append(
            {
                "file": str(file),
                "valid": True,
                "name": spec.name,
                "description": spec.description,
                "parameters": params,
            }
        )
    if json_output:
        console.json(entries)
        return EXIT_OK
    for entry in entries:
        if not entry["valid"]:
            console.out(f"{Path(entry['file']).name}  INVALID: {entry['error']}")
            continue
        console.out(f"{entry['name']}  ({Path(entry['file']).name})  {entry['description'] or ''}".rstrip())
        for p in entry["parameters"]:
            default = "" if p["default"] is None else f" = {json.dumps(p['default'])}"
            need = " (required)" if p["required"] else ""
            need += " (secret)" if p["secret"] else ""
            console.out(
                f"    --set {p['name']}: {p['type']}{default}{need}  {p['description'] or ''}".rstrip()
            )
    if not entries:
        console.out(f"no workflow files in {folder}")
    return EXIT_OK


@app.command()
def reference(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 3 if OUTPUT differs from the generated text.")
    ] = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Generate the workflow-file reference (every key: type, default, meaning) from the schema."""
    from flows.workflow.reference import render_reference

    text = render_reference()
    if output is None:
        sys.stdout.write(text)
        return EXIT_OK
    if check:
        from flows.user_files import read_user_text

        try:
            current = read_user_text(output) if output.exists() else ""
        except OpsflowError as err:
            return _fail(Console(verbose=verbose, quiet=quiet), err)
        if current != text:
            Console(verbose=verbose, quiet=quiet).error(
                f"{output} is stale: run `python -m flows.batch reference -o {output}`"
            )
            return EXIT_CONFIG
        return EXIT_OK
    output.write_text(text)
    return EXIT_OK


@server_app.command("status")
def server_status(json_output: Json = False, verbose: Verbose = False, quiet: Quiet = False) -> int:
    """Say which Prefect API local runs use."""
    from flows.local_server import configured_api_url, healthy, local_api_url
    from flows.settings import get_settings

    settings = get_settings()
    url = configured_api_url() or local_api_url(settings.server_port)
    up = healthy(url)
    info = {"mode": settings.server, "api_url": url, "healthy": up}
    Console.json(info) if json_output else Console.out(
        f"{url}: {'up' if up else 'not answering'} (mode {settings.server})"
    )
    return EXIT_OK


@server_app.command("stop")
def server_stop(verbose: Verbose = False, quiet: Quiet = False) -> int:
    """Stop the local Prefect server that opsflow started."""
    from flows.local_server import stop_server

    Console(verbose=verbose, quiet=quiet).info(stop_server())
    return EXIT_OK


def _configure_prefect_logging(*, verbose: bool, quiet: bool) -> None:
    """Prefect's console lines in seed 003's format (set before Prefect is imported)."""
    fmt = "[%(asctime)s] [%(levelname)s] [%(flow_run_name)s] "
    defaults = {
        "PREFECT_LOGGING_FORMATTERS_STANDARD_FLOW_RUN_FMT": fmt + "%(message)s",
        "PREFECT_LOGGING_FORMATTERS_STANDARD_TASK_RUN_FMT": fmt + "%(task_run_name)s: %(message)s",
        "PREFECT_LOGGING_FORMATTERS_STANDARD_FORMAT": "[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s",
        "PREFECT_LOGGING_FORMATTERS_STANDARD_DATEFMT": "%Y-%m-%d %H:%M:%S",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if verbose or quiet:
        os.environ["PREFECT_LOGGING_LEVEL"] = "DEBUG" if verbose else "WARNING"


# Typer vendors click; its UsageError is reached through the public BadParameter.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors exit 3 (configuration), not click's 2 (our 'dependency')."""
    try:
        code = app(args=argv, prog_name="opsflow", standalone_mode=False)
    except _USAGE_ERROR as exc:
        exc.show()
        code = EXIT_CONFIG
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except typer.Exit as exc:
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
