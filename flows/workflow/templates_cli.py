"""`templates`, `create` and `template generate`: the command line of flows/workflow/scaffold.py.

No Prefect import, like `validate`: these answer at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_options import Json, Quiet, Verbose
from flows.console import Console
from flows.errors import EXIT_OK, OpsflowError

template_app = typer.Typer(help="Make your own workflow templates.", no_args_is_help=True)

Output = Annotated[Path | None, typer.Option("--output", "-o", help="File to write.", show_default=False)]
Force = Annotated[bool, typer.Option("--force", help="Replace the file if it exists.")]


def _fail(console: Console, err: OpsflowError) -> int:
    console.error(str(err))
    return err.exit_code


def templates(json_output: Json = False, verbose: Verbose = False, quiet: Quiet = False) -> int:
    """List workflow templates (built-in and OPSFLOW_TEMPLATES_DIR) with their parameters."""
    from flows.workflow.scaffold import available_templates

    console = Console(verbose=verbose, quiet=quiet)
    problems: list[str] = []
    try:
        found = available_templates(problems)
    except OpsflowError as err:
        return _fail(console, err)
    for problem in problems:
        console.warning(f"{problem} — left out")
    entries = [
        {
            "name": t.name,
            "description": t.description,
            "builtin": t.builtin,
            "file": str(t.path),
            "parameters": [
                {"name": p.name, "type": p.kind, "default": p.shown_default, "description": p.description}
                for p in t.parameters()
            ],
        }
        for t in found.values()
    ]
    if json_output:
        console.json(entries)
        return EXIT_OK
    for entry in entries:
        origin = "" if entry["builtin"] else f"  ({entry['file']})"
        console.out(f"{entry['name']}  {entry['description']}{origin}")
        for p in entry["parameters"]:
            console.out(f"    --set {p['name']}={_shown(p['default'])}  {p['description'] or ''}".rstrip())
    return EXIT_OK


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return json.dumps(value) if not isinstance(value, str) else value


def create(
    name: Annotated[str, typer.Argument(help="Name of the new workflow.", show_default=False)],
    template: Annotated[
        str, typer.Option("--template", "-t", help="Template name (see `templates`) or template file.")
    ],
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Parameter defaults: key=value[,k2=v2]; lists as a,b or JSON."),
    ] = None,
    output: Output = None,
    force: Force = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Write a new workflow file from a template (default OPSFLOW_WORKFLOWS_DIR/NAME.yaml)."""
    from flows.settings import get_settings
    from flows.workflow.params import parse_sets
    from flows.workflow.scaffold import create_workflow, find_template, write_new

    console = Console(verbose=verbose, quiet=quiet)
    path = output or get_settings().workflows_dir / f"{name}.yaml"
    try:
        write_new(path, create_workflow(find_template(template), name, parse_sets(sets or [])), force=force)
    except OpsflowError as err:
        return _fail(console, err)
    console.info(f"created {path} from template `{template}`; check it with `opsflow plan {path}`")
    return EXIT_OK


@template_app.command("generate")
def generate(
    source: Annotated[Path, typer.Option("--from", help="Workflow file to generalise.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Name of the new template.", show_default=False)],
    params: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="KEY: expose parameter KEY; KEY=VALUE: make VALUE its default, or turn the literal "
            "VALUE in commands into a new parameter KEY. Repeatable; default: every parameter.",
        ),
    ] = None,
    description: Annotated[str | None, typer.Option(help="One line shown by `templates`.")] = None,
    output: Output = None,
    force: Force = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Turn a workflow into a template (default OPSFLOW_TEMPLATES_DIR/NAME.yaml)."""
    from flows.workflow.scaffold import generate_template, user_templates_dir, write_new

    console = Console(verbose=verbose, quiet=quiet)
    path = output or user_templates_dir() / f"{name}.yaml"
    try:
        text, settable = generate_template(source, name, params or [], description)
        write_new(path, text, force=force)
    except OpsflowError as err:
        return _fail(console, err)
    console.info(
        f"template `{name}` written to {path} (parameters: {', '.join(settable) or 'none'}); "
        f"use it with `opsflow create NAME --template {name if output is None else path}`"
    )
    return EXIT_OK
