"""From check results to the health document, its overall status and its exit code. Pure.

The document is seed 004's health check service shape, with opsflow's details added:

    {"status": "healthy" | "degraded" | "unhealthy",
     "timestamp": "2026-01-01T10:30:00Z", "uptime": 12.5, "environment": "production",
     "components": {"redis": {"status": "up", "responseTime": 1.2, "error": null,
                              "required": true, "kind": "redis", "target": "redis://…",
                              "reason": "ok", "details": {}}, ...},
     "summary": {"up": 4, "degraded": 0, "down": 0, "skipped": 1},
     "problems": ["redis: cannot reach Redis at …"], "exit_code": 0}

`responseTime` is in milliseconds; `uptime` is how long the answering process has run
(seed 004's `process.uptime()`), in seconds. A component is `up`, `degraded` (disk above the
warning threshold), `down` or `skipped` (not configured, not required).

Overall status and exit code:
- unhealthy: a required check is down, or a disk is above the critical threshold; exit 4 when
  a required service could not be reached (refused, timed out, no such host), else 1;
- degraded: only checks that are not required are down, or a disk is above the warning
  threshold; exit 0 (with a warning);
- healthy: everything configured is up; exit 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flows.errors import EXIT_CONNECTION, EXIT_FAILURE, EXIT_OK
from flows.health.checks import CRITICAL, DEGRADED, DOWN, SKIPPED, UP, CheckResult

HEALTHY, UNHEALTHY = "healthy", "unhealthy"
STATUS_VALUE = {HEALTHY: 1.0, DEGRADED: 0.5, UNHEALTHY: 0.0}


def _fatal(result: CheckResult) -> bool:
    return result.status == DOWN and (result.required or result.reason == CRITICAL)


def overall_status(results: Iterable[CheckResult]) -> str:
    results = list(results)
    if any(_fatal(r) for r in results):
        return UNHEALTHY
    if any(r.status in (DOWN, DEGRADED) for r in results):
        return DEGRADED
    return HEALTHY


def exit_code(results: Iterable[CheckResult]) -> int:
    """4 when a required service is unreachable, 1 when otherwise unhealthy, else 0."""
    results = list(results)
    if any(r.required and r.unreachable for r in results):
        return EXIT_CONNECTION
    return EXIT_FAILURE if overall_status(results) == UNHEALTHY else EXIT_OK


def problems(results: Iterable[CheckResult]) -> list[str]:
    """One line per check that is not up (skipped ones included), what makes it unhealthy first."""

    def rank(r: CheckResult) -> tuple[int, str]:
        return (0 if _fatal(r) else {DOWN: 1, DEGRADED: 2, SKIPPED: 3}[r.status], r.name)

    lines = []
    for r in sorted((r for r in results if r.status != UP), key=rank):
        label = "required, " if r.required and r.status == DOWN else ""
        lines.append(f"{r.name} ({label}{r.status}): {r.error or r.reason}")
    return lines


def component(result: CheckResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "responseTime": result.response_time_ms,
        "error": result.error,
        "required": result.required,
        "kind": result.kind,
        "target": result.target,
        "reason": result.reason,
        "details": result.details,
    }


def build_document(
    results: list[CheckResult], *, uptime: float, environment: str, now: datetime | None = None
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    summary = {s: 0 for s in (UP, DEGRADED, DOWN, SKIPPED)}
    for r in results:
        summary[r.status] += 1
    return {
        "status": overall_status(results),
        "timestamp": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "uptime": round(uptime, 3),
        "environment": environment,
        "components": {r.name: component(r) for r in results},
        "summary": summary,
        "problems": problems(results),
        "exit_code": exit_code(results),
    }


def results_of(document: dict[str, Any]) -> list[CheckResult]:
    """The check results a document was built from (for metrics and the terminal table)."""
    return [
        CheckResult(
            name=name,
            kind=c["kind"],
            status=c["status"],
            required=c["required"],
            target=c["target"],
            reason=c["reason"],
            response_time_ms=c["responseTime"],
            error=c["error"],
            details=c["details"],
        )
        for name, c in document["components"].items()
    ]


def headline(document: dict[str, Any]) -> str:
    """One line for logs and the terminal: the status and, when not healthy, why."""
    s = document["summary"]
    checked = s[UP] + s[DEGRADED] + s[DOWN]
    if document["status"] == HEALTHY:
        skipped = f", {s[SKIPPED]} skipped" if s[SKIPPED] else ""
        return f"healthy: {checked} check(s) up{skipped}"
    worst = [p for p in document["problems"] if "(skipped)" not in p]
    return f"{document['status']}: " + "; ".join(worst)
