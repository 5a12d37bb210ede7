"""`python -m flows.batch release ...`: blue-green releases from a terminal.

    release deploy VERSION [--source DIR] [-e ENV] [--approval auto|required|never]
    release status [-e ENV] [--json]       what blue, green and live serve, and their health
    release rollback [-e ENV]              traffic back to the other color
    release stop [-e ENV]                  stop the router and both instances
    release history [-e ENV] [--json]      the release_log records

One release operation (deploy, rollback, stop) per target directory at a time: a second one
is refused with exit 2, naming the run that holds it (flows/release/lock.py).

Each environment has its own target directory (--root, else $OPSFLOW_RELEASE_ROOT/ENV, else
~/.opsflow/releases/ENV) and its own ports. ENV is a plain name, and a directory serves the
environment that first released to it: another name for it is refused, exit 3. A production
release waits for `opsflow approve`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_options import Json, Quiet, Verbose, duration_option
from flows.console import Console
from flows.errors import EXIT_OK, ValidationError

release_app = typer.Typer(help="Blue-green releases with approval and rollback.", no_args_is_help=True)

Env = Annotated[
    str,
    typer.Option("--env", "-e", help="Environment: a plain name like production (its own target and ports)."),
]
Root = Annotated[str | None, typer.Option("--root", help="Target directory (default: per environment).")]
BluePort = Annotated[
    int | None, typer.Option("--blue-port", help="Port of the blue instance.", min=1, max=65535)
]
GreenPort = Annotated[
    int | None, typer.Option("--green-port", help="Port of the green instance.", min=1, max=65535)
]
RouterPort = Annotated[
    int | None, typer.Option("--router-port", help="Port of the router.", min=1, max=65535)
]
DEFAULT_PORTS = {"router": 8080, "blue": 8081, "green": 8082}


def ports_of(root: Path, blue: int | None, green: int | None, router: int | None) -> dict[str, int]:
    """Ports given, else those the target's router was started with, else the defaults."""
    known = dict(DEFAULT_PORTS)
    config = root / "run" / "router.json"
    if config.is_file():
        saved = json.loads(config.read_text())
        known.update({"router": saved["port"], "blue": saved["blue"], "green": saved["green"]})
    given = {"router": router, "blue": blue, "green": green}
    return {k: given[k] or known[k] for k in known}


def _flow_ports(root: Path, blue, green, router) -> dict[str, Any]:
    ports = ports_of(root, blue, green, router)
    return {"blue_port": ports["blue"], "green_port": ports["green"], "router_port": ports["router"]}


def _target(console: Console, env: str, root: str | None, *, free: bool = False) -> Path | int:
    """`env`'s target directory, or the exit code (its line printed) when `env` is not a plain
    name (3), the directory is another environment's (3), or, with `free`, another operation
    holds it now (2) — all before any flow run, whose own checks under the lock still decide."""
    from flows.errors import OpsflowError
    from flows.release.lock import refuse_if_held
    from flows.release.target import Target, check_environment, release_root

    try:
        path = release_root(root, check_environment(env))
        Target(path).check_owner(env)
        if free:
            refuse_if_held(env, path)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    return path


@release_app.command("deploy")
def deploy(
    version: Annotated[str, typer.Argument(help="Version to release, e.g. 1.4.2.", show_default=False)],
    source: Annotated[
        str, typer.Option("--source", help="Directory with the release's files.")
    ] = "deployments/releases/app",
    env: Env = "staging",
    approval: Annotated[
        str, typer.Option("--approval", help="auto (production only), required or never.")
    ] = "auto",
    approval_timeout: Annotated[
        str, typer.Option("--approval-timeout", help="No decision after this rejects: 30m, 1h...")
    ] = "1h",
    notify: Annotated[
        list[str] | None,
        typer.Option("--notify", help="Channel to notify (OPSFLOW_NOTIFY_<NAME>); repeatable."),
    ] = None,
    root: Root = None,
    blue_port: BluePort = None,
    green_port: GreenPort = None,
    router_port: RouterPort = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Release VERSION blue-green: deploy to the idle color, test, approve, switch, verify; roll back on failure.

    Refused (exit 2) while another release operation of the environment runs or waits for approval."""
    from flows.maintenance.terminal import run_procedure

    console = Console(verbose=verbose, quiet=quiet)
    try:
        duration_option(approval_timeout, "--approval-timeout")  # refused before a run starts
    except ValidationError as err:
        console.error(str(err))
        return err.exit_code
    if isinstance(path := _target(console, env, root, free=True), int):
        return path
    return run_procedure(
        console,
        "flows.release.flow:release",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        version=version,
        source=source,
        environment=env,
        root=str(path),
        approval=approval,
        approval_timeout=approval_timeout,
        notify=notify or [],
        **_flow_ports(path, blue_port, green_port, router_port),
    )


@release_app.command("rollback")
def rollback(
    env: Env = "staging",
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why; kept in the release history.")] = "",
    root: Root = None,
    blue_port: BluePort = None,
    green_port: GreenPort = None,
    router_port: RouterPort = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Switch traffic back to the other color (the previous release), if it is healthy.

    Refused (exit 2) while another release operation of the environment runs or waits for
    approval, and when the other color serves a version that never went live there."""
    from flows.maintenance.terminal import run_procedure

    console = Console(verbose=verbose, quiet=quiet)
    if isinstance(path := _target(console, env, root, free=True), int):
        return path
    return run_procedure(
        console,
        "flows.release.rollback:rollback_release",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        environment=env,
        root=str(path),
        reason=reason,
        **_flow_ports(path, blue_port, green_port, router_port),
    )


@release_app.command("status")
def status(
    env: Env = "staging",
    root: Root = None,
    blue_port: BluePort = None,
    green_port: GreenPort = None,
    router_port: RouterPort = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """What each color serves, which is live, and whether each answers healthy."""
    from flows.maintenance.cli import table
    from flows.release import instances
    from flows.release.target import Target

    console = Console(verbose=verbose, quiet=quiet)
    if isinstance(path := _target(console, env, root), int):
        return path
    target, ports = Target(path), ports_of(path, blue_port, green_port, router_port)
    rows = []
    for name in ("router", "blue", "green"):
        code, doc = instances.probe(instances.health_url(ports[name]), timeout=2.0)
        rows.append(
            {
                "name": name,
                "version": doc.get("version") if name == "router" else target.version(name) or "-",
                "live": "yes" if target.live() == name else "",
                "port": ports[name],
                "pid": instances.running_pid(path, name) or "-",
                "health": code or doc.get("error", "down"),
            }
        )
    if json_output:
        console.json({**target.status(), "processes": rows})
    else:
        console.out(
            f"{env}: {path}, live: {target.live() or 'none'} ({target.version(target.live()) if target.live() else '-'})"
        )
        console.out(table(rows))
    return EXIT_OK


@release_app.command("stop")
def stop(env: Env = "staging", root: Root = None, verbose: Verbose = False, quiet: Quiet = False) -> int:
    """Stop the router and both instances of an environment (the release files stay).

    Refused (exit 2) while another release operation of the environment runs or waits for approval."""
    from flows.errors import DependencyError, OpsflowError
    from flows.records.locks import LockLost
    from flows.release import instances
    from flows.release.lock import environment_lock, lost

    console = Console(verbose=verbose, quiet=quiet)
    if isinstance(path := _target(console, env, root), int):
        return path
    try:
        with environment_lock(env, path, "release stop", console.warning) as lock:
            try:
                with lock.step(console.warning):
                    stopped = [name for name in ("router", "blue", "green") if instances.stop(path, name)]
            except LockLost as exc:
                raise DependencyError(lost(env, exc)) from None
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    console.info(f"stopped {', '.join(stopped)}" if stopped else f"nothing running under {path}")
    return EXIT_OK


@release_app.command("history")
def history(
    env: Annotated[str | None, typer.Option("--env", "-e", help="Only this environment.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Most records shown.")] = 20,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Release operations, newest first: version, outcome, who approved, why it did not go live.

    Outcomes: released, rejected, failed, aborted, rolled_back (a rollback), running, killed."""
    from flows.errors import OpsflowError
    from flows.maintenance.cli import table
    from flows.records.db import session
    from flows.records.liveness import shown_state
    from flows.records.procedures import release_history
    from flows.release.target import check_environment

    console = Console(verbose=verbose, quiet=quiet)
    if env is not None:
        try:
            check_environment(env)
        except OpsflowError as err:
            console.error(str(err))
            return err.exit_code
    with session() as db:
        rows = [
            {
                "id": r.id,
                "environment": r.environment,
                "version": r.version,
                "previous": r.previous_version or "-",
                "color": r.color or "-",
                "outcome": shown_state(r.outcome, r.host, r.pid),
                "approved_by": r.approved_by or "-",
                "started": r.started_at.isoformat(timespec="seconds"),
                "reason": (r.reason or "")[:80],
            }
            for r in release_history(db, env, limit)
        ]
    if json_output:
        console.json(rows)
    else:
        console.out(table(rows) if rows else "no releases recorded")
    return EXIT_OK
