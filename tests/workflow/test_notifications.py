"""A workflow's notifications reach real receivers on 127.0.0.1 (HTTP json:// and SMTP
mailto://); a receiver that is down or slow never fails or stalls the run."""

from __future__ import annotations

import json
import socket

import pytest

from flows.workflow.notifications import message
from tests.receivers import MailReceiver, Receiver

pytestmark = pytest.mark.usefixtures("prefect_api")

WORKFLOW = """
name: notified
parameters:
  - name: fail
    type: boolean
    default: false
steps:
  - name: build
    command: "echo building"
  - name: check
    command: "test {{ .fail }} = false"
notifications:
  channels: [hook, mail]
  events: [started, completed, failed]
"""


def run(path, **kwargs):
    from flows.workflow.run import run_workflow

    state = run_workflow(path=str(path), **kwargs, return_state=True)
    return state, state.result(raise_on_failure=False)


@pytest.fixture
def receivers(monkeypatch):
    hook, mail = Receiver(), MailReceiver()
    monkeypatch.setenv("OPSFLOW_NOTIFY_HOOK", hook.url)
    monkeypatch.setenv("OPSFLOW_NOTIFY_MAIL", mail.url)
    yield hook, mail
    hook.close()
    mail.close()


def test_started_and_completed_reach_http_and_smtp(write_workflow, receivers):
    hook, mail = receivers
    state, _ = run(write_workflow(WORKFLOW), environment="staging")
    assert state.is_completed()
    posts = [json.loads(body) for body in hook.bodies]
    assert [p["title"] for p in posts] == [
        "opsflow: notified started (staging)",
        "opsflow: notified completed (staging)",
    ]
    run_id = str(state.state_details.flow_run_id)
    done = posts[1]["message"]
    assert f"run: {run_id}" in done and "duration:" in done and f"/runs/flow-run/{run_id}" in done
    assert len(mail.messages) == 2
    assert b"Subject: opsflow: notified completed (staging)" in mail.messages[1].content


def test_failure_names_the_failed_step(write_workflow, receivers):
    hook, mail = receivers
    state, _ = run(write_workflow(WORKFLOW), parameters={"fail": "true"})
    assert state.is_failed()
    failed = json.loads(hook.bodies[-1])
    assert (
        failed["title"].startswith("opsflow: notified failed") and "failed steps: check" in failed["message"]
    )
    assert failed["type"] == "failure"
    assert b"failed steps: check" in mail.messages[-1].content


def run_logs(state, until) -> list[str]:
    """The run's log lines as the Prefect UI shows them, once `until(lines)` holds."""
    from tests.prefect_logs import run_log_messages

    return run_log_messages(state.state_details.flow_run_id, until=until)


def test_dead_and_slow_receivers_only_warn(write_workflow, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    slow = Receiver(delay=600)  # holds each request until closed
    monkeypatch.setenv("OPSFLOW_NOTIFY_HOOK", f"json://127.0.0.1:{dead_port}/hook")
    monkeypatch.setenv("OPSFLOW_NOTIFY_MAIL", slow.url + "?cto=1&rto=1")
    try:
        state, _ = run(write_workflow(WORKFLOW))
        # The run ended while the slow receiver still held what was sent to it: each send gave up
        # after its ~1 s timeout instead of waiting for an answer.
        held = list(slow.bodies)
    finally:
        slow.close()
    assert state.is_completed()
    assert held == []
    lines = run_logs(state, until=lambda got: sum("notification to" in line for line in got) >= 2)
    warnings = [line for line in lines if "notification to" in line]
    assert any(f"json://127.0.0.1:{dead_port}/" in w for w in warnings) and len(warnings) >= 2, warnings


def test_a_channel_without_url_is_one_warning(write_workflow, monkeypatch):
    monkeypatch.delenv("OPSFLOW_NOTIFY_HOOK", raising=False)
    monkeypatch.delenv("OPSFLOW_NOTIFY_MAIL", raising=False)
    state, _ = run(write_workflow(WORKFLOW))
    assert state.is_completed()
    missing = [
        line
        for line in run_logs(state, until=lambda got: any("have no URL" in line for line in got))
        if "have no URL" in line
    ]
    assert len(missing) == 1 and "OPSFLOW_NOTIFY_HOOK" in missing[0]


def test_message_is_pure_text():
    title, body = message(
        "failed", "wf", "prod", "abc", duration=3.25, failed=["a", "b"], detail="failed: a, b"
    )
    assert title == "opsflow: wf failed (prod)"
    assert "duration: 3.2s" in body and "failed steps: a, b" in body
