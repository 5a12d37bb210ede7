"""Overall status, exit code and the document's shape, from check results. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flows.health.checks import CheckResult
from flows.health.status import build_document, exit_code, headline, overall_status, results_of


def r(name: str, status: str = "up", *, required: bool = False, reason: str = "ok") -> CheckResult:
    error = None if status == "up" else f"{name} is {reason}"
    return CheckResult(name, "http", status, required, f"http://{name}/", reason, 1.5, error)


@pytest.mark.parametrize(
    ("results", "status", "code"),
    [
        ([r("a"), r("b", required=True)], "healthy", 0),
        ([r("a"), r("p", "skipped", reason="not_configured")], "healthy", 0),
        ([r("a", "down", reason="failed"), r("b", required=True)], "degraded", 0),
        ([r("a", "down", reason="unreachable"), r("b", required=True)], "degraded", 0),
        ([r("disk", "degraded", reason="warn")], "degraded", 0),
        ([r("a", "down", required=True, reason="failed")], "unhealthy", 1),
        ([r("a", "down", required=True, reason="not_configured")], "unhealthy", 1),
        ([r("disk", "down", reason="critical")], "unhealthy", 1),
        ([r("a", "down", required=True, reason="unreachable")], "unhealthy", 4),
        ([r("a", "down", required=True, reason="timeout")], "unhealthy", 4),
        (
            [r("disk", "down", reason="critical"), r("a", "down", required=True, reason="timeout")],
            "unhealthy",
            4,
        ),
    ],
)
def test_status_and_exit_code(results, status, code):
    assert overall_status(results) == status
    assert exit_code(results) == code


def test_document_has_seed_004s_shape_and_round_trips():
    results = [r("a"), r("b", "down", reason="failed"), r("c", "skipped", reason="not_configured")]
    now = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    document = build_document(results, uptime=12.34567, environment="production", now=now)
    assert document["timestamp"] == "2026-01-01T10:30:00Z" and document["uptime"] == 12.346
    assert document["status"] == "degraded" and document["exit_code"] == 0
    assert document["components"]["a"] == {
        "status": "up",
        "responseTime": 1.5,
        "error": None,
        "required": False,
        "kind": "http",
        "target": "http://a/",
        "reason": "ok",
        "details": {},
    }
    assert document["summary"] == {"up": 1, "degraded": 0, "down": 1, "skipped": 1}
    assert document["problems"] == ["b (down): b is failed", "c (skipped): c is not_configured"]
    assert headline(document) == "degraded: b (down): b is failed"
    assert results_of(document) == results
