"""Summary, metrics and the completion callback, against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.files.report import metrics_json, notify_completion, write_reports
from tests.receivers import Receiver

SUMMARY = {
    "job_id": "abc123",
    "name": "nightly",
    "status": "completed",
    "total": 10,
    "processed": 8,
    "skipped": 1,
    "retried": 2,
    "fallback": 1,
    "dead_lettered": 1,
    "duration": 4.5,
    "processing_time": 3.6,
    "started_at": "2026-11-26T10:00:00+00:00",
    "finished_at": "2026-11-26T10:00:05+00:00",
}


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def test_reports_are_written_and_metrics_parse(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path))
    folder = write_reports(SUMMARY)
    assert json.loads((folder / "summary.json").read_text())["processed"] == 8
    data = json.loads((folder / "metrics.json").read_text())
    assert data["total_jobs"] == 9 and data["completed_jobs"] == 8 and data["failed_jobs"] == 1
    assert data["success_rate"] == pytest.approx(88.89) and data["average_processing_time"] == pytest.approx(
        0.4
    )
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families((folder / "metrics.prom").read_text())
        for s in family.samples
    }
    assert samples["opsflow_files_jobs_total"] == 9
    assert samples["opsflow_files_jobs_failed_total"] == 1
    assert samples["opsflow_files_success_rate"] == pytest.approx(88.89)
    assert metrics_json({**SUMMARY, "processed": 0, "dead_lettered": 0})["success_rate"] == 100.0


def test_completion_callback_reaches_a_real_receiver(receiver):
    warnings = []
    assert notify_completion([receiver.url], SUMMARY, warnings.append)
    assert warnings == []
    payload = json.loads(receiver.bodies[0])
    assert "nightly" in payload["title"] and json.loads(payload["message"])["job_id"] == "abc123"


def test_a_dead_receiver_only_warns():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    warnings = []
    assert not notify_completion([f"json://user:secret@127.0.0.1:{port}/hook"], SUMMARY, warnings.append)
    assert len(warnings) == 1 and "secret" not in warnings[0] and "the batch result stands" in warnings[0]
    assert "was not accepted" in warnings[0]  # refused: given up at once, not at the timeout


def test_a_slow_receiver_cannot_stall_the_batch():
    slow = Receiver(delay=600)  # holds each request until closed
    try:
        warnings = []
        assert not notify_completion([slow.url], SUMMARY, warnings.append)
        # Given up (at its timeout) while the receiver still held the request.
        assert slow.bodies == []
        assert len(warnings) == 1 and "the batch result stands" in warnings[0]
    finally:
        slow.close()
