"""`python -m flows.batch health ...`: health checks, their history, and the HTTP endpoint.

    health check [--endpoint URL|name=URL ...] [--json]   exit 0 healthy/degraded, 1 unhealthy,
                                                          4 a required service unreachable
    health serve [--port N] [--host H]                    /health (200/503) and /metrics
    health history [--check NAME] [--limit N] [--json]

Settings (`OPSFLOW_*`, `.env.<env>`) say what to check: `database_url`, `redis_url`,
`disk_paths`, `health_endpoints`, `health_required`, thresholds and `check_timeout_seconds`;
options given here override them (`--endpoint` replaces the configured endpoints). Endpoints
with a password or token belong in the settings, never on a command line. A bad value exits 3
before anything runs.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flows.cli_options import Json, Quiet, Verbose
from flows.console import Console
from flows.errors import EXIT_CONFIG, EXIT_CONNECTION, EXIT_OK, EXIT_PERMISSION, OpsflowError, ValidationError
from flows.maintenance.cli import DatabaseUrl, Env, run, secret

health_app = typer.Typer(
    help="Health of PostgreSQL, Redis, disks, the Prefect API and HTTP endpoints.", no_args_is_help=True
)

Endpoints = Annotated[
    list[str] | None,
    typer.Option(
        "--endpoint",
        help="HTTP endpoint to check, URL or name=URL (repeatable; replaces OPSFLOW_HEALTH_ENDPOINTS).",
        show_default=False,
    ),
]
RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url", help="Redis URL (default: OPSFLOW_REDIS_URL or REDIS_URL).", show_default=False
    ),
]


def _plan(env: str | None, database_url: str | None, redis_url: str | None, endpoints: list[str] | None):
    """Settings and checks, validated; raises `ValidationError` (exit 3) on a bad value."""
    from flows.health.checks import plan_checks, reject_credentials
    from flows.local_server import configured_api_url
    from flows.maintenance.settings import load_settings

    if endpoints:
        reject_credentials(endpoints)
    settings = load_settings(
        env,
        database_url=secret(database_url),
        redis_url=secret(redis_url),
        health_endpoints=endpoints or None,
    )
    return settings, plan_checks(settings, configured_api_url())


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in rows
    ]


def render_check(console: Console, outcome: dict[str, Any]) -> None:
    """The terminal table of a health run; a degraded result is a warning."""
    document = outcome.get("details") or {}
    components = document.get("components")
    if not components:
        if outcome.get("message"):
            console.out(outcome["message"])
        return
    rows = [["CHECK", "STATUS", "REQUIRED", "TIME", "DETAIL"]]
    for name, c in components.items():
        took = "" if c["responseTime"] is None else f"{c['responseTime']:.1f} ms"
        rows.append(
            [name, c["status"], "yes" if c["required"] else "no", took, c["error"] or c["target"] or ""]
        )
    for line in _table(rows):
        console.out(line)
    console.out(f"overall: {document['status']}")
    if document["status"] == "degraded":
        console.warning(outcome.get("message") or "degraded")
    elif document["status"] == "healthy":
        console.info(outcome.get("message") or "healthy")


def render_document(console: Console, outcome: dict[str, Any]) -> None:
    console.json(outcome.get("details") or outcome)


@health_app.command("check")
def check(
    endpoint: Endpoints = None,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Check every configured service once (as a Prefect flow run); print a table or the document."""
    console = Console("health-check", verbose=verbose, quiet=quiet)
    try:
        _plan(env, database_url, redis_url, endpoint)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    return run(
        console,
        "flows.health.flow:health_check",
        json_output=False,  # --json prints the health document itself, not the run's outcome
        verbose=verbose,
        quiet=quiet,
        needs_database=False,
        render=render_document if json_output else render_check,
        environment=env,
        database_url=secret(database_url),
        redis_url=secret(redis_url),
        endpoints=endpoint or None,
    )


def _valid_host(host: str) -> str:
    host = host.strip()
    if not host or len(host) > 253 or not all(ch.isalnum() or ch in ".:-_%[]" for ch in host):
        raise ValidationError("--host must be an IP address or a host name, e.g. 127.0.0.1 or 0.0.0.0")
    return host.strip("[]")


@health_app.command("serve")
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8788,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    cache_seconds: Annotated[
        float, typer.Option(help="How long one round of checks answers every request.", min=0, max=300)
    ] = 5.0,
    endpoint: Endpoints = None,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    env: Env = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Serve /health (JSON; 200 healthy or degraded, 503 unhealthy) and /metrics (Prometheus)."""
    import errno
    import signal
    import socket

    console = Console("health-serve", verbose=verbose, quiet=quiet)
    try:
        listen = _valid_host(host)
        settings, checks = _plan(env, database_url, redis_url, endpoint)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    from flows.health.serve import HealthService, make_server

    service = HealthService(
        checks,
        timeout=settings.check_timeout_seconds,
        environment=settings.environment,
        cache_seconds=cache_seconds,
    )
    try:
        server = make_server(service, listen, port, log=console.debug)
    except socket.gaierror:
        console.error(f"cannot listen on {listen}: not an address of this machine")
        return EXIT_CONFIG
    except PermissionError:
        console.error(f"cannot listen on {listen}:{port}: permission denied (ports below 1024 need root)")
        return EXIT_PERMISSION
    except OSError as exc:
        console.error(f"cannot listen on {listen}:{port}: {exc.strerror or exc}")
        return EXIT_CONFIG if exc.errno == errno.EADDRNOTAVAIL else EXIT_CONNECTION

    def _stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    shown = f"[{listen}]" if ":" in listen else listen
    console.info(f"serving http://{shown}:{server.server_port}/health and /metrics")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.info("stopped")
    finally:
        server.server_close()
    return EXIT_OK


@health_app.command("history")
def history(
    check: Annotated[str | None, typer.Option("--check", help="Only this check (e.g. redis).")] = None,
    limit: Annotated[int, typer.Option(help="Most rows to show, newest first.", min=1, max=10000)] = 20,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Recorded health check results (`health_check_results`), newest first."""
    console = Console("health-history", verbose=verbose, quiet=quiet)
    try:
        if check is not None and (
            not check.strip() or len(check) > 200 or any(ord(ch) < 32 or ord(ch) == 127 for ch in check)
        ):
            raise ValidationError("--check must be a check name such as postgres, redis or disk:/")
        from flows.records.db import session
        from flows.records.procedures import health_history

        with session() as db:
            rows = health_history(db, check=check, limit=limit)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    entries = [
        {
            "checked_at": r.checked_at.isoformat(),
            "run_id": r.run_id,
            "check": r.check_name,
            "status": r.status,
            "required": r.required,
            "response_time_ms": r.response_time_ms,
            "overall_status": r.overall_status,
            "details": r.detail_dict(),
        }
        for r in rows
    ]
    if json_output:
        console.json(entries)
        return EXIT_OK
    if not entries:
        console.out("no health check results recorded" + (f" for {check!r}" if check else ""))
        return EXIT_OK
    table = [["CHECKED AT (UTC)", "CHECK", "STATUS", "OVERALL", "TIME", "DETAIL"]]
    for e in entries:
        took = "" if e["response_time_ms"] is None else f"{e['response_time_ms']:.1f} ms"
        detail = e["details"].get("error") or e["details"].get("target") or ""
        table.append(
            [
                e["checked_at"][:19].replace("T", " "),
                e["check"],
                e["status"],
                e["overall_status"],
                took,
                detail,
            ]
        )
    for line in _table(table):
        console.out(line)
    return EXIT_OK
