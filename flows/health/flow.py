"""`health check`: the health flow, its history rows and its `script_execution_log` row.

Each check is its own Prefect task, submitted at once to the flow's default task runner
(`ThreadPoolTaskRunner`), rather than one task running a thread pool: the UI then shows every
check as a task run with its own duration and result, the checks overlap so the run takes as
long as the slowest one (the timeout at most), and a slow check is visible as such. The tasks
never raise and never retry (a retry would hide a flapping service and multiply the wait);
each is bounded by `run_check`, which stops waiting at `check_timeout_seconds` whatever the
client library does.

The run records one `health_check_results` row per check (with the run's overall status) and
one `script_execution_log` row, and ends Failed when unhealthy (exit 1, or 4 when a required
service is unreachable), so the UI, automations and `trigger --wait` agree with the terminal.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from flows.health.checks import Check, CheckResult, plan_checks, reject_credentials, run_check
from flows.health.status import build_document, headline
from flows.maintenance.record import finish, recorded
from flows.maintenance.settings import load_settings

STARTED = time.monotonic()


@task(
    name="health-check-one",
    task_run_name="check-{check.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=0,
)
def check_one(check: Check, timeout: float) -> CheckResult:
    return run_check(check, timeout)


def check_all(
    checks: list[Check], settings: Any, logger: Any, prefix: str = ""
) -> tuple[list[CheckResult], dict[str, Any]]:
    """Each check as a task run of the current flow run (named `<prefix>check-<name>`), the
    health document of their results, and each problem logged (skipped ones as info)."""
    futures = [
        check_one.with_options(task_run_name=f"{prefix}check-{c.name}").submit(
            c, settings.check_timeout_seconds
        )
        for c in checks
    ]
    results = [f.result() for f in futures]
    document = build_document(results, uptime=time.monotonic() - STARTED, environment=settings.environment)
    for problem in document["problems"]:
        (logger.info if "(skipped)" in problem else logger.warning)(problem)
    return results, document


def record_results(results: list[CheckResult], document: dict[str, Any], run_id: str) -> None:
    """One `health_check_results` row per check, in one transaction."""
    from flows.records.db import session
    from flows.records.models import to_json
    from flows.records.procedures import HealthCheckResult, record_health

    rows = [
        HealthCheckResult(
            run_id=run_id,
            check_name=r.name,
            status=r.status,
            required=r.required,
            response_time_ms=r.response_time_ms,
            details=to_json(
                {"kind": r.kind, "target": r.target, "reason": r.reason, "error": r.error} | r.details
            ),
            overall_status=document["status"],
        )
        for r in results
    ]
    with session() as db:
        record_health(db, rows)


def _run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or uuid.uuid4())


@flow(name="health-check", log_prints=True)
def health_check(
    environment: str | None = None,
    database_url: SecretStr | None = None,
    redis_url: SecretStr | None = None,
    endpoints: list[str] | None = None,
) -> dict[str, Any]:
    """Check PostgreSQL, Redis, the Prefect API, disk space and HTTP endpoints; record the result.

    `endpoints` (URL or name=URL) replace the configured `health_endpoints`; they must carry no
    password or token (flow parameters are visible in Prefect): configure those in settings.
    """
    if endpoints:
        reject_credentials(endpoints, "endpoint")
    from flows.local_server import configured_api_url

    settings = load_settings(
        environment, database_url=database_url, redis_url=redis_url, health_endpoints=endpoints or None
    )
    checks = plan_checks(settings, configured_api_url())
    params = {
        "checks": [c.name for c in checks],
        "required": [c.name for c in checks if c.required],
        "targets": {c.name: c.shown for c in checks if c.shown},
        "timeout_seconds": settings.check_timeout_seconds,
    }
    logger = get_run_logger()
    with recorded("health-check", params, settings) as outcome:
        results, document = check_all(checks, settings, logger)
        record_results(results, document, _run_id())
        outcome.exit_code = document["exit_code"]
        outcome.message = headline(document)
        outcome.details = document
    table = [
        {
            "check": r.name,
            "status": r.status,
            "required": "yes" if r.required else "",
            "ms": r.response_time_ms if r.response_time_ms is not None else "",
            "detail": r.error or r.target,
        }
        for r in results
    ]
    return finish(outcome, table=table)
