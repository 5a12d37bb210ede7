"""`health serve`: `/health` (the health document; 200 healthy or degraded, 503 unhealthy) and
`/metrics` (Prometheus text) over HTTP.

The checks run in this process (a thread each), not as Prefect flow runs: a load balancer or
Prometheus asking every few seconds would otherwise fill the Prefect UI and the history tables
with thousands of runs a day. The scheduled `health check` flow is the recorded history. One
result is reused for `cache_seconds` and only one check run is ever in progress, so however
often and however many clients ask, the services see at most one round of checks per period.

`/metrics` serves seed 003's contract from the newest finished `script_execution_log` row of
each procedure (`script_execution_duration_seconds`, `script_execution_status` 1 success /
0 failure, `script_last_run_timestamp` = when it ended) and the health gauges
(`opsflow_health_status` 1 / 0.5 / 0, `opsflow_health_check_up`,
`opsflow_health_check_response_seconds`), through a prometheus-client Collector on a registry
of its own; and every workflow's metrics (`opsflow_workflow_*`, from $OPSFLOW_HOME/metrics/*.json,
flows/workflow/metrics.py).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flows.health.checks import DOWN, SKIPPED, Check, run_checks
from flows.health.status import STATUS_VALUE, UNHEALTHY, build_document, results_of

DEFAULT_CACHE_SECONDS = 5.0


class HealthService:
    """The checks, run at most once per `cache_seconds`, one run at a time."""

    def __init__(
        self, checks: list[Check], *, timeout: float, environment: str, cache_seconds: float
    ) -> None:
        self.checks = checks
        self.timeout = timeout
        self.environment = environment
        self.cache_seconds = cache_seconds
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._document: dict[str, Any] | None = None
        self._at = 0.0

    def document(self) -> dict[str, Any]:
        with self._lock:
            if self._document is not None and time.monotonic() - self._at < self.cache_seconds:
                return self._document
            results = run_checks(self.checks, self.timeout)
            self._at = time.monotonic()
            self._document = build_document(
                results, uptime=self._at - self.started, environment=self.environment
            )
            return self._document


def latest_runs() -> list[Any]:
    """The newest finished run of each procedure, from the records database."""
    from flows.records.db import session
    from flows.records.procedures import latest_per_script

    with session() as db:
        return latest_per_script(db)


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class HealthCollector(Collector):
    """Procedure metrics (seed 003) and health gauges, computed when Prometheus scrapes."""

    def __init__(self, service: HealthService, runs: Callable[[], list[Any]] = latest_runs) -> None:
        self.service = service
        self.runs = runs

    def _families(self) -> dict[str, GaugeMetricFamily]:
        return {
            "duration": _gauge(
                "script_execution_duration_seconds",
                "How long the newest finished run of each procedure took.",
                ["script"],
            ),
            "status": _gauge(
                "script_execution_status",
                "Whether the newest finished run of each procedure succeeded (1) or failed (0).",
                ["script"],
            ),
            "last_run": _gauge(
                "script_last_run_timestamp",
                "When the newest finished run of each procedure ended (Unix time).",
                ["script"],
            ),
            "records_up": _gauge(
                "opsflow_records_up", "Whether the records database could be read (1) or not (0)."
            ),
            "health": _gauge(
                "opsflow_health_status", "Overall health: 1 healthy, 0.5 degraded, 0 unhealthy."
            ),
            "up": _gauge(
                "opsflow_health_check_up",
                "Whether each health check is up (1; a disk above the warning threshold too) or down (0).",
                ["check", "kind", "required"],
            ),
            "seconds": _gauge(
                "opsflow_health_check_response_seconds",
                "How long each health check took.",
                ["check", "kind"],
            ),
        }

    def describe(self) -> Iterator[Metric]:
        # Without describe(), registering would run collect(): the checks, at start-up.
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        try:
            runs = self.runs()
            families["records_up"].add_metric([], 1)
        except Exception:  # the health gauges still matter when the records cannot be read
            runs = []
            families["records_up"].add_metric([], 0)
        for run in runs:
            label = [run.script_name]
            families["duration"].add_metric(label, float(run.duration or 0.0))
            families["status"].add_metric(label, 1.0 if run.status in ("succeeded", "dry_run") else 0.0)
            families["last_run"].add_metric(label, run.ended_at.timestamp())
        document = self.service.document()
        families["health"].add_metric([], STATUS_VALUE[document["status"]])
        for result in results_of(document):
            if result.status == SKIPPED:
                continue
            required = "true" if result.required else "false"
            families["up"].add_metric(
                [result.name, result.kind, required], 0.0 if result.status == DOWN else 1.0
            )
            if result.response_time_ms is not None:
                families["seconds"].add_metric([result.name, result.kind], result.response_time_ms / 1000)
        yield from families.values()


def make_registry(service: HealthService, runs: Callable[[], list[Any]] = latest_runs) -> CollectorRegistry:
    from flows.workflow.metrics import MetricsCollector, read_states

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(service, runs))
    registry.register(MetricsCollector(read_states))  # each workflow's metrics file, read per scrape
    return registry


def make_server(
    service: HealthService,
    host: str,
    port: int,
    *,
    log: Callable[[str], None] | None = None,
    runs: Callable[[], list[Any]] = latest_runs,
) -> ThreadingHTTPServer:
    """A server answering /health and /metrics (call `serve_forever`); anything else is 404."""
    registry = make_registry(service, runs)

    class Handler(BaseHTTPRequestHandler):
        def version_string(self) -> str:
            return "opsflow-health"

        def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
            path = urllib.parse.urlsplit(self.path).path
            if path == "/health":
                document = service.document()
                code = 503 if document["status"] == UNHEALTHY else 200
                self._send(code, "application/json", json.dumps(document, indent=2).encode() + b"\n")
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            else:
                body = {"error": "not found", "paths": ["/health", "/metrics"]}
                self._send(404, "application/json", json.dumps(body).encode() + b"\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base signature
            if log is not None:
                log(f"{self.address_string()} {format % args}")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
