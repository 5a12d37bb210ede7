"""A batch's results for people and machines: summary JSON, metrics (Prometheus text and JSON),
and the completion callback. Pure of Prefect.

Metric names follow seed 000's `processing_metrics.json` and its Prometheus export, under the
`opsflow_files_` prefix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.notify import NOTIFY_TIMEOUT as NOTIFY_TIMEOUT  # re-exported: a batch waits no longer
from flows.notify import send

# Progress listeners (the command line's progress bar): called with ("total", n) once the
# batch is counted, then ("advance", k) as files settle.
listeners: list[Callable[[str, int], None]] = []


def advance(files: int = 1) -> None:
    for listener in list(listeners):
        listener("advance", files)


def announce_total(files: int) -> None:
    for listener in list(listeners):
        listener("total", files)


def batch_dir(job_id: str) -> Path:
    return Path(os.environ.get("OPSFLOW_HOME", Path.home() / ".opsflow")) / "batches" / job_id


def metrics_json(summary: dict[str, Any]) -> dict[str, Any]:
    """Seed 000's processing_metrics.json, filled from a batch summary."""
    total = summary["processed"] + summary["dead_lettered"]
    return {
        "start_time": summary["started_at"],
        "last_update": summary["finished_at"],
        "total_jobs": total,
        "completed_jobs": summary["processed"],
        "failed_jobs": summary["dead_lettered"],
        "skipped_jobs": summary["skipped"],
        "retried_jobs": summary["retried"],
        "fallback_jobs": summary["fallback"],
        "processing_time_total": round(summary["processing_time"], 3),
        "success_rate": round(100 * summary["processed"] / total, 2) if total else 100.0,
        "average_processing_time": round(summary["processing_time"] / total, 4) if total else 0.0,
        "batch_duration_seconds": summary["duration"],
    }


def metrics_prometheus(summary: dict[str, Any]) -> str:
    """The same numbers in Prometheus text format (prometheus_client renders it)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    data = metrics_json(summary)
    registry = CollectorRegistry()
    labels = {"job": summary["name"]}

    def counter(name: str, help_text: str, value: float) -> None:
        Counter(f"opsflow_files_{name}", help_text, list(labels), registry=registry).labels(**labels).inc(
            value
        )

    def gauge(name: str, help_text: str, value: float) -> None:
        Gauge(f"opsflow_files_{name}", help_text, list(labels), registry=registry).labels(**labels).set(value)

    counter("jobs", "Total number of files processed (completed or failed)", data["total_jobs"])
    counter("jobs_completed", "Number of files successfully processed", data["completed_jobs"])
    counter("jobs_failed", "Number of files that ended in the dead-letter queue", data["failed_jobs"])
    counter("jobs_skipped", "Number of unchanged files skipped", data["skipped_jobs"])
    counter("jobs_retried", "Number of files that needed a retry", data["retried_jobs"])
    counter("jobs_fallback", "Number of files processed by a fallback processor", data["fallback_jobs"])
    gauge("success_rate", "Success rate percentage", data["success_rate"])
    gauge(
        "avg_processing_time", "Average processing time per file in seconds", data["average_processing_time"]
    )
    gauge(
        "batch_duration_seconds",
        "Wall-clock duration of the batch in seconds",
        data["batch_duration_seconds"],
    )
    return generate_latest(registry).decode()


def write_reports(summary: dict[str, Any]) -> Path:
    """summary.json, metrics.json and metrics.prom under OPSFLOW_HOME/batches/<job>/; returns it."""
    folder = batch_dir(summary["job_id"])
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("summary.json", json.dumps(summary, indent=2, default=str)),
        ("metrics.json", json.dumps(metrics_json(summary), indent=2)),
        ("metrics.prom", metrics_prometheus(summary)),
    ):
        temporary = folder / f".{name}.tmp"
        temporary.write_text(text + ("\n" if not text.endswith("\n") else ""))
        os.replace(temporary, folder / name)
    return folder


def notify_completion(urls: list[str], summary: dict[str, Any], warn: Callable[[str], None]) -> bool:
    """Send the summary through apprise (e.g. `json://host/path`); never raises, never waits
    more than NOTIFY_TIMEOUT per URL. Returns whether every receiver accepted it."""
    status = "completed" if not summary["dead_lettered"] else "completed with failures"
    kind = "success" if not summary["dead_lettered"] else "warning"
    if summary.get("status") == "interrupted":
        status, kind = "interrupted (its records database failed)", "failure"
    return send(
        urls,
        f"opsflow batch {summary['name']} {status}",
        json.dumps(summary, default=str),
        lambda message: warn(message.replace("the run's result", "the batch result")),
        notify_type=kind,
    )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
