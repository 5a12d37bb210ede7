"""The health flow in this process against the real services and HTTP endpoints on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from flows.health.flow import health_check
from flows.records.db import session
from flows.records.procedures import health_history, list_executions

from .conftest import PASSWORD, TIMEOUT, with_password

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api", "health_env")]


def run(**params) -> dict:
    """The run's outcome, whether it ended Completed (healthy, degraded) or Failed (unhealthy)."""
    state = health_check(return_state=True, **params)
    value = state.result(raise_on_failure=False)
    outcome = value if isinstance(value, dict) else value.outcome
    assert state.is_completed() == (outcome["exit_code"] == 0)
    return outcome


def records(run_id: str) -> list:
    with session() as db:
        return [row for row in health_history(db, limit=200) if row.run_id == run_id]


def everything_recorded(outcome: dict) -> str:
    """Every text the run left behind: its outcome, its history rows, its log row."""
    with session() as db:
        log = list_executions(db, "health-check", limit=1)[0]
        rows = health_history(db, limit=50)
    texts = [json.dumps(outcome), log.parameters, log.message or ""]
    texts += [row.details for row in rows]
    return "\n".join(texts)


def test_all_up_is_healthy_and_recorded(endpoints):
    outcome = run(endpoints=[f"api={endpoints.url('/ok')}"])
    document = outcome["details"]
    assert outcome["exit_code"] == 0 and document["status"] == "healthy", document["problems"]
    components = document["components"]
    assert set(components) == {"postgres", "redis", "prefect", "disk:/", "api"}
    assert all(c["status"] == "up" and c["error"] is None for c in components.values())
    assert components["postgres"]["required"] and not components["api"]["required"]
    assert document["timestamp"].endswith("Z") and document["uptime"] > 0
    assert all(c["responseTime"] < TIMEOUT * 1000 for c in components.values())

    with session() as db:
        log = list_executions(db, "health-check", limit=1)[0]
    assert (log.status, log.exit_code) == ("succeeded", 0) and log.flow_run_id
    rows = records(log.flow_run_id)
    assert sorted(r.check_name for r in rows) == sorted(components)
    assert {r.overall_status for r in rows} == {"healthy"} and all(r.status == "up" for r in rows)
    assert next(r for r in rows if r.check_name == "redis").required
    assert PASSWORD not in everything_recorded(outcome)


def test_an_unreachable_required_service_exits_4(closed_port):
    url = SecretStr(f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0")
    outcome = run(redis_url=url)
    document = outcome["details"]
    assert outcome["exit_code"] == 4 and document["status"] == "unhealthy"
    redis = document["components"]["redis"]
    assert (redis["status"], redis["reason"]) == ("down", "unreachable") and "refused" in redis["error"]
    assert outcome["message"].startswith("unhealthy: redis (required, down)")
    with session() as db:
        log = list_executions(db, "health-check", limit=1)[0]
    assert (log.status, log.exit_code) == ("failed", 4)
    assert {r.overall_status for r in records(log.flow_run_id)} == {"unhealthy"}
    assert PASSWORD not in everything_recorded(outcome)

    from prefect.client.orchestration import get_client

    from tests.prefect_logs import run_log_messages

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(log.flow_run_id)
    assert flow_run.state.is_failed() and PASSWORD not in str(flow_run.parameters) + str(
        flow_run.state.message
    )
    logs = run_log_messages(flow_run.id, until=lambda got: any("redis (required, down)" in m for m in got))
    assert any("redis (required, down)" in message for message in logs)
    assert not any(PASSWORD in message for message in logs)


def test_a_failed_procedure_notifies_its_channels_without_secrets(closed_port, endpoints, monkeypatch):
    from tests.receivers import Receiver

    hook = Receiver()
    monkeypatch.setenv("OPSFLOW_NOTIFY_CHANNELS", '["hook"]')
    monkeypatch.setenv("OPSFLOW_NOTIFY_HOOK", hook.url)
    try:
        assert run(redis_url=SecretStr(f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0"))["exit_code"] == 4
        assert run(endpoints=[f"api={endpoints.url('/ok')}"])["exit_code"] == 0  # not an event by default
    finally:
        hook.close()
    (post,) = [json.loads(body) for body in hook.bodies]
    assert post["title"].startswith("opsflow: health-check failed (")
    assert "procedure: health-check" in post["message"] and "exit code: 4" in post["message"]
    assert "unhealthy: redis (required, down)" in post["message"] and "/runs/flow-run/" in post["message"]
    assert PASSWORD not in json.dumps(post)


def test_a_failing_endpoint_that_is_not_required_degrades(endpoints):
    outcome = run(endpoints=[f"api={endpoints.url('/fail')}", endpoints.url("/ok")])
    document = outcome["details"]
    assert outcome["exit_code"] == 0 and document["status"] == "degraded"
    assert document["components"]["api"]["error"].endswith("answered HTTP 500")
    assert document["components"]["127.0.0.1:" + endpoints.url("/ok").rsplit(":", 1)[1]]["status"] == "up"
    assert outcome["message"] == f"degraded: api (down): {endpoints.url('/fail')} answered HTTP 500"


def test_a_hanging_endpoint_times_out_within_the_timeout(endpoints, monkeypatch):
    monkeypatch.setenv("OPSFLOW_HEALTH_REQUIRED", '["postgres", "redis", "slow"]')
    monkeypatch.setenv("OPSFLOW_CHECK_TIMEOUT_SECONDS", "1")
    outcome = run(endpoints=[f"slow={endpoints.url('/hang')}"])
    slow = outcome["details"]["components"]["slow"]
    # Given up at its timeout (the endpoint answers 200 only when the test ends), not before.
    assert (slow["status"], slow["reason"]) == ("down", "timeout")
    assert slow["responseTime"] >= 900
    assert outcome["exit_code"] == 4  # required and no answer: unreachable


def test_disk_above_the_critical_threshold_is_unhealthy(monkeypatch):
    monkeypatch.setenv("OPSFLOW_DISK_CRITICAL_PERCENT", "0.001")
    outcome = run()
    disk = outcome["details"]["components"]["disk:/"]
    assert (disk["status"], disk["reason"]) == ("down", "critical")
    assert outcome["exit_code"] == 1 and outcome["details"]["status"] == "unhealthy"


def test_disk_above_the_warning_threshold_degrades(monkeypatch):
    monkeypatch.setenv("OPSFLOW_DISK_WARN_PERCENT", "0.001")
    outcome = run()
    assert outcome["exit_code"] == 0 and outcome["details"]["status"] == "degraded"
    assert outcome["details"]["components"]["disk:/"]["status"] == "degraded"


def test_no_target_database_is_unhealthy_only_when_postgres_is_required(monkeypatch):
    monkeypatch.delenv("OPSFLOW_TARGET_DATABASE_URL")
    outcome = run()
    postgres = outcome["details"]["components"]["postgres"]
    assert (postgres["status"], postgres["reason"]) == ("down", "not_configured")
    assert outcome["exit_code"] == 1 and "OPSFLOW_TARGET_DATABASE_URL" in outcome["message"]

    monkeypatch.setenv("OPSFLOW_HEALTH_REQUIRED", '["redis"]')
    outcome = run()
    assert outcome["details"]["components"]["postgres"]["status"] == "skipped"
    assert outcome["exit_code"] == 0 and outcome["details"]["status"] == "healthy"


def test_a_required_check_that_answers_wrongly_exits_1(pg_admin_url):
    url = with_password(pg_admin_url).rsplit("/", 1)[0] + "/opsflow_no_such_db"
    outcome = run(database_url=SecretStr(url))
    assert outcome["exit_code"] == 1
    assert outcome["details"]["components"]["postgres"]["reason"] == "failed"
    assert PASSWORD not in json.dumps(outcome)
