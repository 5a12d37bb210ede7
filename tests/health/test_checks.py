"""The checks one by one against real parts: endpoints, ports, disks, PostgreSQL, Redis."""

from __future__ import annotations

import threading

import pytest
from pydantic import SecretStr

from flows.errors import ValidationError
from flows.health.checks import (
    Check,
    display_url,
    parse_endpoint,
    plan_checks,
    reject_credentials,
    run_check,
    run_checks,
)
from flows.maintenance.settings import load_settings

from .conftest import PASSWORD, with_password


@pytest.mark.parametrize(
    ("spec", "name", "url"),
    [
        ("http://127.0.0.1:8080/health", "127.0.0.1:8080/health", "http://127.0.0.1:8080/health"),
        ("api=https://example.org/", "api", "https://example.org/"),
        ("https://example.org/x?a=b=c", "example.org/x", "https://example.org/x?a=b=c"),
        ("  web.v2=http://h/  ", "web.v2", "http://h/"),
    ],
)
def test_endpoints_parse(spec, name, url):
    endpoint = parse_endpoint(spec)
    assert (endpoint.name, endpoint.url) == (name, url)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "ftp://example.org/",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "api=gopher://x/",
        "http:///nohost",
        "http://h:99999/",
        "http://[::1/",
        "http://h/\nX-Injected: 1",
        "http://h/ x",
        "bad name=http://h/",
        "$(rm -rf /)=http://h/",
        "http://h/" + "a" * 3000,
        "user:pw@host",
    ],
)
def test_bad_endpoints_are_validation_errors(spec):
    with pytest.raises(ValidationError) as err:
        parse_endpoint(spec)
    assert "\n" not in str(err.value) and "pw" not in str(err.value)


def test_credentials_are_refused_outside_settings_and_masked_when_shown():
    for spec in (f"http://u:{PASSWORD}@h/", f"api=http://h/?token={PASSWORD}"):
        with pytest.raises(ValidationError) as err:
            reject_credentials([spec])
        assert PASSWORD not in str(err.value) and "OPSFLOW_HEALTH_ENDPOINTS" in str(err.value)
    reject_credentials(["http://h/?page=2"])
    assert (
        display_url(f"https://u:{PASSWORD}@h:1/p?api_key={PASSWORD}&x=1")
        == "https://u:***@h:1/p?api_key=%2A%2A%2A&x=1"
    )


def test_plan_marks_required_checks_and_rejects_unknown_names(base_env, monkeypatch):
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", f"postgresql://app:{PASSWORD}@db.internal:5432/app")
    monkeypatch.setenv("OPSFLOW_REDIS_URL", f"redis://:{PASSWORD}@cache.internal:6379/0")
    monkeypatch.setenv("OPSFLOW_HEALTH_REQUIRED", '["postgres", "disk", "api"]')
    monkeypatch.setenv("OPSFLOW_HEALTH_ENDPOINTS", '["api=http://h/", "http://h2/"]')
    checks = plan_checks(load_settings(), "http://127.0.0.1:4200/api")
    assert {c.name: c.required for c in checks} == {
        "postgres": True,
        "redis": False,
        "prefect": False,
        "disk:/": True,
        "api": True,
        "h2": False,
    }
    assert {c.name: c.shown for c in checks if c.kind in ("postgres", "redis")} == {
        "postgres": "postgresql://app@db.internal:5432/app",
        "redis": "redis://:***@cache.internal:6379/0",
    }
    monkeypatch.setenv("OPSFLOW_HEALTH_REQUIRED", '["redsi"]')
    with pytest.raises(ValidationError, match="redsi"):
        plan_checks(load_settings(), None)
    monkeypatch.setenv("OPSFLOW_HEALTH_REQUIRED", "[]")
    monkeypatch.setenv("OPSFLOW_HEALTH_ENDPOINTS", '["redis=http://h/"]')
    with pytest.raises(ValidationError, match="two checks"):
        plan_checks(load_settings(), None)
    with pytest.raises(ValidationError, match="redis://"):
        plan_checks(load_settings(redis_url="http://127.0.0.1:6379"), None)


def _http(url: str) -> Check:
    return Check("ep", "http", display_url(url), target=SecretStr(url))


def test_http_statuses(endpoints, closed_port):
    ok, moved, fail = (run_check(_http(endpoints.url(p)), 2) for p in ("/ok", "/moved", "/fail"))
    assert (ok.status, moved.status) == ("up", "up") and moved.details["http_status"] == 302
    assert (fail.status, fail.reason, fail.error) == (
        "down",
        "failed",
        f"{endpoints.url('/fail')} answered HTTP 500",
    )
    refused = run_check(_http(f"http://127.0.0.1:{closed_port}/"), 2)
    assert (refused.status, refused.reason, refused.unreachable) == ("down", "unreachable", True)


def test_a_hanging_endpoint_is_given_up_on_at_the_timeout(endpoints):
    result = run_check(_http(endpoints.url("/hang")), 0.5)
    # Given up at the timeout (the endpoint answers 200 only when the test ends), not before.
    assert (result.status, result.reason) == ("down", "timeout")
    assert result.response_time_ms >= 450


def test_checks_run_at_once(endpoints):
    """`run_checks` starts every check together: /meet answers only when all are waiting."""
    endpoints.meeting = threading.Barrier(4)
    results = run_checks([_http(endpoints.url(f"/meet?n={n}")) for n in range(4)], 60)
    assert [r.status for r in results] == ["up"] * 4, [r.error for r in results]


def test_disk_thresholds(tmp_path):
    def disk(warn, critical, path=tmp_path):
        check = Check("disk", "disk", str(path), target=SecretStr(str(path)))
        check.warn_percent, check.critical_percent = warn, critical
        return run_check(check, 2)

    ok = disk(99.99, 100)
    assert ok.status == "up" and 0 < ok.details["used_percent"] < 99.99
    assert (disk(0.001, 100).status, disk(0.001, 100).reason) == ("degraded", "warn")
    critical = disk(0.001, 0.001)
    assert (critical.status, critical.reason) == ("down", "critical") and "full" in critical.error
    missing = disk(50, 90, tmp_path / "nope")
    assert (missing.status, missing.reason) == ("down", "failed")


def test_unconfigured_checks_are_skipped_unless_required():
    assert run_check(Check("prefect", "prefect", ""), 1).status == "skipped"
    required = run_check(Check("postgres", "postgres", "", required=True), 1)
    assert (required.status, required.reason, required.unreachable) == ("down", "not_configured", False)
    assert "OPSFLOW_TARGET_DATABASE_URL" in required.error


@pytest.mark.services
def test_postgres_and_redis_up_refused_and_silent(pg_admin_url, redis_url, closed_port, silent_port):
    pg_url, rd_url = with_password(pg_admin_url), with_password(redis_url)
    pg = lambda url: Check("postgres", "postgres", "pg", target=SecretStr(url))  # noqa: E731
    rd = lambda url: Check("redis", "redis", "rd", target=SecretStr(url))  # noqa: E731
    on_port = lambda url, port: url.replace(":5432/", f":{port}/").replace(":6379/", f":{port}/")  # noqa: E731

    results = run_checks(
        [
            pg(pg_url),
            rd(rd_url),
            pg(on_port(pg_url, closed_port)),
            rd(on_port(rd_url, closed_port)),
            # libpq waits 2 s at least to connect; the check gives up at its own timeout.
            pg(on_port(pg_url, silent_port)),
            rd(on_port(rd_url, silent_port)),
            pg(pg_url.rsplit("/", 1)[0] + "/opsflow_no_such_db"),
        ],
        0.7,
    )
    up_pg, up_rd, refused_pg, refused_rd, silent_pg, silent_rd, no_db = results
    assert up_pg.status == up_rd.status == "up" and up_pg.details["server_version"] > 0
    assert refused_pg.reason == refused_rd.reason == "unreachable"
    assert silent_pg.reason == silent_rd.reason == "timeout"  # their own timeout, not libpq's 2 s
    assert (no_db.status, no_db.reason) == ("down", "failed") and "opsflow_no_such_db" in no_db.error
    assert all(PASSWORD not in str(r.to_dict()) for r in results)
