"""`opsflow backfill DEPLOYMENT --from DATE --to DATE`: one run per past cron tick (Airflow's backfill).

Prefect's scheduler only makes runs from now on; this makes the ones a window of the past
should have had. Each run is scheduled at its tick (so `prefect.runtime.flow_run
.scheduled_start_time` is the tick), tagged `backfill`, named `backfill-<tick>`, and given the
tick as `logical_date` when the flow takes that parameter (`run_workflow` does). A tick whose
run (ours or the scheduler's) completed is skipped, one still in flight is followed, not
duplicated; failed ticks run again. Exit codes (flows/errors.py): 0 every tick Completed; 1 a
run failed or --timeout ran out; 3 bad dates, no cron schedule, too many ticks; 4 Prefect API
not reachable; 10 --dry-run. Pure parts first; the client part reuses trigger's.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer

from flows.cli_options import Json, Quiet, Verbose, duration_option
from flows.console import Console
from flows.errors import EXIT_DRY_RUN, EXIT_FAILURE, EXIT_OK, OpsflowError, ValidationError
from flows.prefect_api import api_errors, need_server
from flows.trigger import POLL_SECONDS, Timeout, exit_code_for, find_deployment
from flows.workflow.units import format_duration

MAX_TICKS = 1000
PER_CALL = 1000  # the server's CronSchedule.get_dates looks at no more candidates than this
TAG = "backfill"
PAGE = 200


def parse_when(text: str, option: str, *, end: bool = False) -> datetime:
    """`2026-11-01` or an ISO datetime; naive when written without offset. As the window's end,
    a bare date stands for the whole day: the last instant before the next midnight."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                f"{option} {text!r}: expected 2026-11-01 or 2026-11-01T02:00[+01:00]"
            ) from None
    midnight = datetime.combine(day + timedelta(days=1 if end else 0), datetime.min.time())
    return midnight - timedelta(microseconds=1) if end else midnight


def localize(when: datetime, zone: str) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=ZoneInfo(zone))


async def cron_ticks(schedules: list[Any], start: datetime, end: datetime, max_ticks: int) -> list[datetime]:
    """Every tick of the cron schedules (`.cron`, `.timezone`, `.day_or`) with start <= tick <= end,
    in its schedule's zone, computed by the Prefect server's own CronSchedule (DST as it does)."""
    from prefect.server.schemas.schedules import CronSchedule

    ticks: set[datetime] = set()
    for sched in schedules:
        zone = ZoneInfo(sched.timezone or "UTC")
        server = CronSchedule(cron=sched.cron, timezone=sched.timezone, day_or=sched.day_or)
        cursor = start
        while len(ticks) <= max_ticks:
            page = await server.get_dates(n=min(PER_CALL, max_ticks + 1 - len(ticks)), start=cursor, end=end)
            if not page:
                break
            ticks |= {datetime.fromtimestamp(d.timestamp(), zone) for d in page}
            cursor = page[-1] + timedelta(seconds=1)
        if len(ticks) > max_ticks:
            raise ValidationError(
                f"the window has more than {max_ticks} ticks of `{sched.cron}`: narrow --from/--to "
                f"or raise --max-ticks"
            )
    return sorted(ticks)


@dataclass
class Tick:
    """What to do for one tick: run, rerun (after a failed run), follow (a run in flight), skip."""

    when: datetime
    action: str
    reason: str = ""
    run: Any = None  # the run that decided it, then ours
    attempt: int = 0

    def row(self) -> dict[str, Any]:
        run, state = self.run, self.run.state if self.run else None
        return {
            "tick": self.when.isoformat(),
            "action": self.action,
            "reason": self.reason,
            "run_id": str(run.id) if run else None,
            "run_name": run.name if run else None,
            "state": state.name if state else None,
        }


def decide(ticks: list[datetime], runs: list[Any], now: datetime) -> list[Tick]:
    """Match the deployment's runs to ticks by scheduled time (a normal scheduled run counts)."""
    by_tick: dict[float, list[Any]] = {}
    for run in runs:
        by_tick.setdefault(run.expected_start_time.timestamp(), []).append(run)
    plan = []
    for when in ticks:
        found = by_tick.get(when.timestamp(), [])
        done = [r for r in found if r.state.type.value == "COMPLETED"]
        going = [r for r in found if exit_code_for(r.state.type.value) is None]
        if when > now:
            plan.append(Tick(when, "skip", "in the future: the schedule's to make"))
        elif done:
            plan.append(Tick(when, "skip", f"completed by {done[0].name}", done[0]))
        elif going:
            plan.append(Tick(when, "follow", f"already {going[0].state.name}: {going[0].name}", going[0]))
        elif found:
            last = max(found, key=lambda r: r.created or now)
            plan.append(Tick(when, "rerun", f"{last.name} {last.state.name}", last, attempt=len(found)))
        else:
            plan.append(Tick(when, "run"))
    return plan


def run_name(when: datetime) -> str:
    return f"{TAG}-{when.strftime('%Y-%m-%dT%H:%M')}"


def table(plan: list[Tick]) -> str:
    rows = [[r["tick"], r["action"], r["state"] or "-", r["run_name"] or "-"] for r in map(Tick.row, plan)]
    lines = [["tick", "action", "state", "run"], *rows]
    sizes = [max(len(x) for x in col) for col in zip(*lines, strict=True)]
    return "\n".join("  ".join(v.ljust(s) for v, s in zip(row, sizes, strict=True)).rstrip() for row in lines)


From = typer.Option(
    "--from",
    help="First instant, included: 2026-11-01 or an ISO datetime (no offset: the schedule's timezone).",
    show_default=False,
)
To = typer.Option(
    "--to",
    help="Last instant, included: an ISO datetime, or a date for that whole day (ticks up to 23:59:59).",
    show_default=False,
)
MaxConcurrent = typer.Option(help="Most runs scheduled or running at once (1: one after another).", min=1)
MaxTicks = typer.Option(help="Refuse a window with more ticks than this.", min=1)
Wait = typer.Option(
    help="Follow the runs, creating the next as one ends; --no-wait: create up to --max-concurrent "
    "runs and return (run it again to go on)."
)
DryRun = typer.Option("--dry-run", help="List the ticks and what would be skipped; exit 10, create nothing.")


def backfill(
    deployment: Annotated[str, typer.Argument(help="FLOW/DEPLOYMENT, a unique name, or an id.")],
    start: Annotated[str, From],
    end: Annotated[str, To],
    max_concurrent: Annotated[int, MaxConcurrent] = 1,
    max_ticks: Annotated[int, MaxTicks] = MAX_TICKS,
    dry_run: Annotated[bool, DryRun] = False,
    wait: Annotated[bool, Wait] = True,
    timeout: Annotated[str | None, Timeout] = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """One run per tick of the deployment's cron schedule(s) in a past window; done ticks are skipped."""
    console = Console(verbose=verbose, quiet=quiet)
    try:
        window = parse_when(start, "--from"), parse_when(end, "--to", end=True)
        limit = duration_option(timeout, "--timeout")
        if limit is not None and not wait:
            raise ValidationError("--timeout needs --wait")
        need_server(console, verbose, quiet)
        import anyio

        options = (window, max_concurrent, max_ticks, dry_run, wait, limit)
        code, doc = anyio.run(_backfill, console, deployment, *options)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    console.json(doc) if json_output else console.out(table(doc.pop("plan")))
    return code


# --- the Prefect part -------------------------------------------------------------------------


async def _backfill(console, name, window, max_concurrent, max_ticks, dry_run, wait, limit):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    with api_errors(api):
        async with get_client() as client:
            dep, dep_name = await find_deployment(client, name, api)
            crons = [s.schedule for s in dep.schedules if getattr(s.schedule, "cron", None)]
            if not crons:
                raise ValidationError(f"deployment {dep_name} has no cron schedule: nothing to backfill")
            zone = crons[0].timezone or "UTC"
            first, last = (localize(w, zone) for w in window)
            if first > last:
                raise ValidationError(f"--from {first.isoformat()} is after --to {last.isoformat()}")
            ticks = await cron_ticks(crons, first, last, max_ticks)
            plan = decide(ticks, await _runs_between(client, dep.id, first, last), datetime.now(UTC))
            for tick in plan:
                if tick.action != "run":
                    console.info(f"{tick.when.isoformat()}: {tick.action} ({tick.reason})")
            code = EXIT_DRY_RUN
            if not dry_run:
                code = await _run_ticks(client, console, dep, plan, max_concurrent, wait, limit)
    doc = {"deployment": dep_name, "from": first.isoformat(), "to": last.isoformat(), "timezone": zone}
    doc |= {"dry_run": dry_run, "max_concurrent": max_concurrent}
    doc |= {"cron": [c.cron for c in crons], "ticks": [t.row() for t in plan], "exit_code": code}
    return code, doc | {"plan": plan}


async def _runs_between(client, deployment_id, first: datetime, last: datetime) -> list[Any]:
    from prefect.client.schemas import filters as f

    runs, batch = [], [None] * PAGE
    query = f.FlowRunFilter(
        deployment_id=f.FlowRunFilterDeploymentId(any_=[deployment_id]),
        expected_start_time=f.FlowRunFilterExpectedStartTime(after_=first, before_=last),
    )
    while len(batch) == PAGE:
        batch = await client.read_flow_runs(flow_run_filter=query, limit=PAGE, offset=len(runs))
        runs += batch
    return runs


async def _run_ticks(client, console: Console, dep, plan: list[Tick], max_concurrent, wait, limit) -> int:
    """At most `max_concurrent` runs in flight: the next is created only when one ends."""
    import anyio
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    todo = deque(t for t in plan if t.action in ("run", "rerun"))
    flying = {t.run.id: t for t in plan if t.action == "follow"}
    failed, started = False, time.monotonic()
    takes_date = "logical_date" in (dep.parameter_openapi_schema or {}).get("properties", {})
    while True:
        while todo and len(flying) < max_concurrent:
            tick = todo.popleft()
            tick.run = await _create(client, dep, tick, takes_date)
            flying[tick.run.id] = tick
            console.info(f"created {tick.run.name} ({tick.run.id}) for {tick.when.isoformat()}")
        if not flying or not wait:
            break
        if limit is not None and time.monotonic() - started >= limit:
            console.error(
                f"--timeout {format_duration(limit)}: {len(flying)} runs go on, {len(todo)} ticks not started"
            )
            return EXIT_FAILURE
        await anyio.sleep(POLL_SECONDS)
        ours = FlowRunFilter(id=FlowRunFilterId(any_=list(flying)))
        for run in await client.read_flow_runs(flow_run_filter=ours):
            if (code := exit_code_for(run.state.type.value)) is not None:
                tick = flying.pop(run.id)
                tick.run, failed = run, failed or code != EXIT_OK
                took = f"{run.state.name} in {format_duration(run.total_run_time.total_seconds())}"
                log = console.info if code == EXIT_OK else console.error
                log(took + (f": {run.state.message}" if code else ""), name=run.name)
    if todo:
        console.info(f"{len(todo)} ticks not started yet: run the same backfill again to go on")
    return EXIT_FAILURE if failed else EXIT_OK


async def _create(client, dep, tick: Tick, takes_date: bool):
    from prefect.states import Scheduled

    # Same key for the same attempt: two backfills racing over a tick share one run.
    key = f"{TAG}-{tick.when.astimezone(UTC).isoformat()}-{tick.attempt}"
    return await client.create_flow_run_from_deployment(
        dep.id,
        parameters={"logical_date": tick.when.isoformat()} if takes_date else {},
        state=Scheduled(scheduled_time=tick.when, message=f"backfill of {tick.when.isoformat()}"),
        name=run_name(tick.when),
        tags=[TAG],
        idempotency_key=key,
    )
