"""`opsflow schedule add|list|pause|resume|cancel`: workflow files on a cron, as Prefect deployments.

A schedule is a deployment of the generic flow `run_workflow` (the one prefect.yaml deploys)
with the workflow's path, environment and `--set` values as parameters and a Prefect cron
schedule: the server's scheduler creates the runs, a worker on the pool runs them
(`prefect worker start --pool opsflow-process`). Nothing here schedules anything itself.
Exit codes: 0 ok; 3 bad workflow, cron, timezone, --set or name; 4 Prefect API not reachable.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer

from flows.cli_options import Json, Params, Quiet, Verbose
from flows.console import Console
from flows.errors import EXIT_OK, ConnectionFailure, OpsflowError, PermissionFailure, ValidationError

ROOT = Path(__file__).resolve().parent.parent  # the deployments' source: workers run from here
ENTRYPOINT = "flows/workflow/run.py:run_workflow"
FLOW_NAME = "run-workflow"
TAGS = ["opsflow", "workflow", "scheduled"]
SLUG = "opsflow"
FLOW_DEFAULT_ENVIRONMENT = "development"  # run_workflow's default_environment: a worker's run binds with it

schedule_app = typer.Typer(
    help="Run workflow files on a cron schedule (Prefect deployments; a worker runs them).",
    no_args_is_help=True,
)
Name = Annotated[str, typer.Argument(help="Schedule (deployment) name.", show_default=False)]
File = Annotated[Path, typer.Argument(help="Workflow file.", show_default=False)]
CronOpt = Annotated[
    str, typer.Option("--cron", help='Cron expression, e.g. "0 2 * * 0".', show_default=False)
]
Env = Annotated[str | None, typer.Option("--env", "-e", help="Target environment.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Schedule name (default: the workflow's).")]
Timezone = Annotated[str, typer.Option("--timezone", help="IANA timezone of the cron.")]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Parameters: key=value[,k2=v2]; repeatable; lists as a,b or JSON."),
]
Pool = Annotated[str, typer.Option("--pool", help="Process work pool (created if missing).")]
Keep = Annotated[
    bool, typer.Option("--keep-deployment", help="Delete only the schedule, keep the deployment.")
]


def deployment_path(file: Path, root: Path = ROOT) -> str:
    """The `path` parameter: relative to the project when inside it (workers start there)."""
    resolved = file.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def check_name(name: str) -> str:
    if not name.strip() or re.search(r"[/%&<>]", name):
        raise ValidationError(f"--name {name!r}: use letters, digits, '-', '_' or '.' (no / % & < >)")
    return name


def check_cron(cron: str, timezone: str) -> Any:
    """Prefect's own CronSchedule, so what passes here the server accepts."""
    import pydantic
    from prefect.client.schemas.schedules import CronSchedule

    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except pydantic.ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValidationError(f"--{exc.errors()[0]['loc'][0]}: {problem}") from None


def next_from_cron(cron: str, timezone: str, after: datetime | None = None) -> datetime:
    import anyio
    from prefect.server.schemas.schedules import CronSchedule

    start = after or datetime.now(UTC)
    return anyio.run(lambda: CronSchedule(cron=cron, timezone=timezone).get_dates(n=1, start=start))[0]


def validate_workflow(file: Path, sets: list[str] | None, env: str | None, params: list[str] | None = None):
    """Load, analyse and bind as `run` does; returns the workflow's name and the raw --set values."""
    from flows.secrets import REFERENCE_HINT, plain_secrets
    from flows.workflow.check import analyse
    from flows.workflow.load import load_workflow
    from flows.workflow.params import bind, parse_sets, secret_names

    loaded = load_workflow(file)
    values = parse_sets(sets or [], params or [])
    analyse(loaded, values)
    clear = plain_secrets(values, secret_names(loaded, values).__contains__)
    if clear:
        raise ValidationError(
            f"secret parameter(s) {', '.join(clear)} would be stored in clear in the deployment's parameters "
            f"— pass {REFERENCE_HINT}, resolved when each run starts"
        )
    bind(
        loaded,
        values,
        environment=env,
        default_environment=FLOW_DEFAULT_ENVIRONMENT,
        workflow_id="scheduled",
        resolve=(),  # references are resolved on the worker, when each run starts
    )
    return loaded.spec.name, values


def describe(dep: Any, next_run: datetime | None) -> dict[str, Any]:
    """One row of `schedule list` from a deployment (its first cron schedule)."""
    sched = next(s for s in dep.schedules if getattr(s.schedule, "cron", None))
    params = dep.parameters or {}
    active = bool(sched.active) and not dep.paused
    timezone = sched.schedule.timezone or "UTC"
    next_run = next_run.astimezone(ZoneInfo(timezone)) if next_run else None
    return {
        "name": dep.name,
        "workflow": params.get("path"),
        "environment": params.get("environment"),
        "parameters": params.get("parameters") or {},
        "cron": sched.schedule.cron,
        "timezone": timezone,
        "next_run": next_run.isoformat() if next_run and active else None,
        "status": "active" if active else "paused",
        "work_pool": dep.work_pool_name,
    }


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["name", "workflow", "environment", "cron", "timezone", "next_run", "status"]
    cells = [[str(r[c] if r[c] is not None else "-") for c in cols] for r in rows]
    sizes = [max(len(x) for x in column) for column in zip(cols, *cells, strict=False)]
    return "\n".join(
        "  ".join(v.ljust(s) for v, s in zip(line, sizes, strict=True)).rstrip() for line in [cols, *cells]
    )


# --- the Prefect part -------------------------------------------------------------------------


def _session(console: Console, verbose: bool, quiet: bool, action: Callable[[Any], Any]) -> Any:
    """`action(client)` against a server that keeps running (its scheduler makes the runs)."""
    from flows.batch import _configure_prefect_logging
    from flows.local_server import ensure_api, healthy, local_api_url
    from flows.settings import get_settings

    settings = get_settings()
    url = ensure_api(settings.server, settings.server_port, console.info)
    if url is None:
        if settings.server == "ephemeral":
            raise ValidationError("schedules need a Prefect server, not OPSFLOW_SERVER=ephemeral")
        raise ConnectionFailure(f"no PREFECT_API_URL, no server at {local_api_url(settings.server_port)}")
    if not healthy(url, timeout=5.0):
        raise ConnectionFailure(
            f"cannot reach the Prefect API at {url} — start it, or unset PREFECT_API_URL to use a local server"
        )
    _configure_prefect_logging(verbose=verbose, quiet=quiet)
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        with get_client(sync_client=True) as client:
            return action(client)
    except httpx.TransportError as exc:
        raise ConnectionFailure(f"cannot reach the Prefect API at {url}: {exc}") from None
    except PrefectHTTPStatusError as exc:
        status = exc.response.status_code
        kind = ConnectionFailure if status >= 500 else ValidationError
        kind = PermissionFailure if status in (401, 403) else kind
        raise kind(f"the Prefect API answered {status}: {exc.response.text}") from None


def _ours(client) -> list[Any]:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    return client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))


def _find(client, name: str) -> Any:
    deployments = _ours(client)
    if found := [d for d in deployments if d.name == name]:
        return found[0]
    hint = difflib.get_close_matches(name, [d.name for d in deployments if d.schedules], n=1)
    raise ValidationError(f"no schedule {name!r}" + (f" — did you mean {hint[0]!r}?" if hint else ""))


def auto_scheduled_runs(client, deployment_id: Any, limit: int = 1) -> list[Any]:
    """The runs the server's scheduler has made for a deployment and not started yet, earliest first."""
    from prefect.client.schemas import filters as f
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        flow_run_filter=f.FlowRunFilter(
            deployment_id=f.FlowRunFilterDeploymentId(any_=[deployment_id]),
            state=f.FlowRunFilterState(type=f.FlowRunFilterStateType(any_=["SCHEDULED"])),
            tags=f.FlowRunFilterTags(all_=["auto-scheduled"]),
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=limit,
    )


def _next_run(client, dep: Any) -> datetime | None:
    """The earliest run the server's scheduler has made, else the cron's next time."""
    runs = auto_scheduled_runs(client, dep.id)
    if runs and runs[0].expected_start_time:
        return runs[0].expected_start_time
    sched = next(s.schedule for s in dep.schedules if getattr(s.schedule, "cron", None))
    return next_from_cron(sched.cron, sched.timezone or "UTC")


def _ensure_pool(client, console: Console, pool: str) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with contextlib.suppress(ObjectNotFound):
        client.read_work_pool(pool)
        return
    template = ProcessWorker.get_default_base_job_template()
    client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
    console.info(f"created work pool {pool!r} (process): start a worker: prefect worker start --pool {pool}")


@schedule_app.command("add")
def add(
    file: File,
    cron: CronOpt,
    env: Env = None,
    name: NameOpt = None,
    timezone: Timezone = "UTC",
    sets: Sets = None,
    params: Params = None,
    pool: Pool = "opsflow-process",
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Create or update the deployment of run_workflow that runs FILE on a cron schedule."""
    console = Console(verbose=verbose, quiet=quiet)

    def apply(client) -> dict[str, Any]:
        from prefect.exceptions import ObjectNotFound
        from prefect.schedules import Cron

        from flows.workflow.run import run_workflow

        _ensure_pool(client, console, pool)
        try:
            old = client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            old = None
        if old is not None and "scheduled" not in (old.tags or []):
            console.warning(f"deployment {name!r} was not made by `schedule add`: replacing its parameters")
        active = not old or all(s.active for s in old.schedules)  # adding again keeps it paused
        run_workflow.from_source(source=str(ROOT), entrypoint=ENTRYPOINT).to_deployment(
            name=name,
            schedules=[Cron(cron, timezone=timezone, active=active, slug=SLUG)],
            parameters={"path": deployment_path(file), "environment": env, "parameters": values},
            tags=TAGS,
            work_pool_name=pool,
            description=f"{workflow} on `{cron}` ({timezone}), by `opsflow schedule add`",
        ).apply()
        dep = client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        return describe(dep, next_from_cron(cron, timezone)) | {"action": "updated" if old else "created"}

    try:
        workflow, values = validate_workflow(file, sets, env, params)
        name = check_name(name or workflow)
        check_cron(cron, timezone)
        row = _session(console, verbose, quiet, apply)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    console.json(row) if json_output else console.out(
        f"{row['action']} schedule {name}: {row['workflow']} at `{cron}` ({timezone}) on pool {pool}, "
        + (f"next run {row['next_run']}" if row["next_run"] else "paused: `schedule resume` starts it")
    )
    return EXIT_OK


@schedule_app.command("list")
def list_schedules(json_output: Json = False, verbose: Verbose = False, quiet: Quiet = False) -> int:
    """Every workflow deployment with a cron schedule: workflow, cron, next run, active or paused."""
    console = Console(verbose=verbose, quiet=quiet)

    def rows(client) -> list[dict[str, Any]]:
        deps = [d for d in _ours(client) if any(getattr(s.schedule, "cron", None) for s in d.schedules)]
        return [describe(d, _next_run(client, d)) for d in sorted(deps, key=lambda d: d.name)]

    try:
        found = _session(console, verbose, quiet, rows)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    console.json(found) if json_output else console.out(table(found) if found else "no scheduled workflows")
    return EXIT_OK


def _set_active(name: str, active: bool, verbose: bool, quiet: bool) -> int:
    console = Console(verbose=verbose, quiet=quiet)

    def flip(client) -> None:
        dep = _find(client, name)
        if not dep.schedules:
            raise ValidationError(f"deployment {name!r} has no schedule")
        for sched in dep.schedules:  # pausing one makes the server drop the runs it had made
            client.update_deployment_schedule(dep.id, sched.id, active=active)
        if active and dep.paused:  # paused as a whole, e.g. by `prefect deployment pause`
            client.resume_deployment(dep.id)

    try:
        _session(console, verbose, quiet, flip)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    console.out(f"{'resumed' if active else 'paused'} schedule {name}")
    return EXIT_OK


@schedule_app.command("pause")
def pause(name: Name, verbose: Verbose = False, quiet: Quiet = False) -> int:
    """Make no runs (and drop the future ones) until `schedule resume`."""
    return _set_active(name, False, verbose, quiet)


@schedule_app.command("resume")
def resume(name: Name, verbose: Verbose = False, quiet: Quiet = False) -> int:
    """Make runs again after `schedule pause`."""
    return _set_active(name, True, verbose, quiet)


@schedule_app.command("cancel")
def cancel(name: Name, keep_deployment: Keep = False, verbose: Verbose = False, quiet: Quiet = False) -> int:
    """Delete the schedule's deployment and its scheduled runs (or, --keep-deployment, the schedule)."""
    console = Console(verbose=verbose, quiet=quiet)

    def remove(client) -> bool:
        dep = _find(client, name)
        keep = keep_deployment
        if not keep and "scheduled" not in (dep.tags or []):
            console.warning(f"deployment {name!r} was not made by `schedule add`: keeping it")
            keep = True
        if keep:
            for sched in dep.schedules:  # the server drops the runs the schedule made
                client.delete_deployment_schedule(dep.id, sched.id)
        else:
            client.delete_deployment(dep.id)  # and every scheduled run with it
        return keep

    try:
        kept = _session(console, verbose, quiet, remove)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    console.out(f"cancelled schedule {name}" + (" (deployment kept)" if kept else ""))
    return EXIT_OK
