"""A workflow's metrics after each run: step durations and outcomes, the named run metrics.

Pure computation (`update_state`, `alert_values`) plus the files: `$OPSFLOW_HOME/metrics/
<workflow>.json` holds the accumulated state (counters add up, histogram buckets accumulate)
and `<workflow>.prom` is regenerated from it with prometheus-client after every run; both are
replaced atomically. `health serve` exposes every such file on `/metrics` (`MetricsCollector`).

The named metrics a workflow may declare (`metrics.custom_metrics`, `monitoring.metrics`) or
alert on are those in `NAMED`, each computed from the run's summary; any other name is a
validation error. Exported as `opsflow_workflow_<name>{workflow=...}`: a histogram or summary
of the per-run values, a counter of their sum, or a gauge (the rate for `success_rate`,
otherwise the last run's value). Steps with `metrics` get
`opsflow_workflow_step_duration_seconds` (histogram) and `opsflow_workflow_step_runs_total
{outcome}` (counter), with their `custom_labels`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from flows.errors import ValidationError
from flows.workflow.alerts import parse_condition
from flows.workflow.graph import Graph
from flows.workflow.load import LoadedWorkflow
from flows.workflow.report import RunSummary
from flows.workflow.spec import CustomMetric, StepMetrics, Workflow

BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, math.inf)
PREFIX = "opsflow_workflow_"
COLLECTORS = {"prometheus", "grafana", "json"}  # grafana reads the Prometheus metrics
_RESERVED_LABELS = {"workflow", "step", "outcome", "le", "quantile"}
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Named:
    """A run metric: its help text, its value for one run, its default type, and what an alert
    compares (`run`: this run's value, `total`: the sum over all runs, `mean`: over all runs)."""

    help: str
    per_run: Callable[[RunSummary], float]
    default_type: str
    alert_on: str


def _succeeded(summary: RunSummary) -> float:
    return 1.0 if summary.exit_code == 0 else 0.0


NAMED: dict[str, Named] = {
    "deployment_duration": Named(
        "How long the run took, in seconds.", lambda s: s.duration, "histogram", "run"
    ),
    "workflow_duration": Named(
        "How long the run took, in seconds.", lambda s: s.duration, "histogram", "run"
    ),
    "success_rate": Named(
        "Share of runs that succeeded (as a counter: successful runs).", _succeeded, "gauge", "mean"
    ),
    "failure_count": Named("Runs that failed.", lambda s: 1.0 - _succeeded(s), "counter", "total"),
    "rollback_count": Named(
        "Runs whose rollback steps ran.",
        lambda s: 1.0 if any(o.section == "rollback" for o in s.steps) else 0.0,
        "counter",
        "total",
    ),
    "failed_steps": Named(
        "Steps that failed in the run.",
        lambda s: float(sum(1 for o in s.steps if o.failed)),
        "counter",
        "run",
    ),
    "retry_count": Named(
        "Retries in the run (attempts beyond each step's first).",
        lambda s: float(sum(max(0, o.attempts - 1) for o in s.steps)),
        "counter",
        "run",
    ),
}


# -- validation (pure; `validate` and every run call it) -----------------------------------------
def check_metrics(loaded: LoadedWorkflow, graph: Graph) -> None:
    """Names that cannot be computed, bad labels and alerts with bad syntax are errors here."""
    spec = loaded.spec
    known = ", ".join(NAMED)
    if spec.metrics:
        for i, collector in enumerate(spec.metrics.collectors):
            if collector not in COLLECTORS:
                raise ValidationError(
                    f"unknown metrics collector `{collector}` — use {', '.join(sorted(COLLECTORS))}",
                    where=loaded.where(("metrics", "collectors", i)),
                )
    names = [(m.name, ("metrics", "custom_metrics", i, "name")) for i, m in enumerate(_custom(spec))]
    names += [(n, ("monitoring", "metrics", i)) for i, n in enumerate(_monitored(spec))]
    for name, loc in names:
        if name not in NAMED:
            raise ValidationError(
                f"metric `{name}` is not one opsflow computes — use one of {known}", where=loaded.where(loc)
            )
    if spec.monitoring:
        for i, alert in enumerate(spec.monitoring.alerts):
            where = loaded.where(("monitoring", "alerts", i, "condition"))
            try:
                condition = parse_condition(alert.condition)
            except ValueError as err:
                raise ValidationError(str(err), where=where) from None
            if condition.metric not in NAMED:
                raise ValidationError(
                    f"alert on unknown metric `{condition.metric}` — use one of {known}", where=where
                )
        # `alert_on_failure` alone may go without channels: the run's log carries the alert.
        if spec.monitoring.alerts and not (spec.notifications and spec.notifications.channels):
            raise ValidationError(
                "alerts are sent to `notifications.channels`, and there are none — add a channel",
                where=loaded.where(("monitoring", "alerts")),
            )
    for node in graph.nodes.values():
        step_metrics = node.step.metrics
        if step_metrics is None:
            continue
        if node.step.is_group:
            raise ValidationError(
                f"`metrics` applies to a step with a command or script; `{node.id}` is a group",
                where=loaded.where((*node.loc, "metrics")),
            )
        for label in step_metrics.custom_labels:
            if not _LABEL.match(label) or label.startswith("__") or label in _RESERVED_LABELS:
                raise ValidationError(
                    f"`{label}` cannot be a Prometheus label name (letters, digits, `_`; not "
                    f"{', '.join(sorted(_RESERVED_LABELS))})",
                    where=loaded.where((*node.loc, "metrics", "custom_labels", label)),
                )


def _custom(spec: Workflow) -> list[CustomMetric]:
    return list(spec.metrics.custom_metrics) if spec.metrics else []


def _monitored(spec: Workflow) -> list[str]:
    return list(spec.monitoring.metrics) if spec.monitoring else []


def enabled(loaded: LoadedWorkflow, graph: Graph) -> bool:
    """Whether the workflow asks for metrics or alerts at all (`metrics.enabled: false` turns
    everything off but what `monitoring` asks for)."""
    spec = loaded.spec
    if spec.metrics and not spec.metrics.enabled:
        return bool(spec.monitoring)
    return bool(
        (spec.metrics and spec.metrics.enabled)
        or spec.monitoring
        or any(n.step.metrics for n in graph.nodes.values())
    )


def tracked_steps(graph: Graph) -> dict[str, StepMetrics]:
    return {n.id: n.step.metrics for n in graph.nodes.values() if n.step.metrics}


def declared(loaded: LoadedWorkflow) -> dict[str, str]:
    """Named metric -> Prometheus type, from `metrics.custom_metrics` and `monitoring.metrics`."""
    spec = loaded.spec
    types = {name: NAMED[name].default_type for name in _monitored(spec)}
    if spec.metrics and spec.metrics.enabled:
        types |= {m.name: m.type for m in _custom(spec)}
    return types


# -- accumulation (pure) ----------------------------------------------------------------------
def _observe(stats: dict[str, Any] | None, value: float) -> dict[str, Any]:
    stats = stats or {"count": 0, "sum": 0.0, "last": 0.0, "buckets": [0] * len(BUCKETS)}
    stats["count"] += 1
    stats["sum"] += value
    stats["last"] = value
    stats["buckets"] = [
        n + (1 if value <= le else 0) for n, le in zip(stats["buckets"], BUCKETS, strict=True)
    ]
    return stats


def update_state(
    state: dict[str, Any] | None,
    summary: RunSummary,
    types: dict[str, str],
    tracked: dict[str, StepMetrics],
) -> dict[str, Any]:
    """The accumulated state after one more run (the input is not changed)."""
    state = json.loads(json.dumps(state)) if state else {"workflow": summary.workflow, "runs": {}}
    outcome = "success" if summary.exit_code == 0 else "failure"
    state["runs"][outcome] = state["runs"].get(outcome, 0) + 1
    state["last_run"] = {
        "run_id": summary.workflow_id,
        "environment": summary.environment,
        "state": summary.state,
        "finished": summary.finished or time.time(),
        "duration": summary.duration,
    }
    named = state.setdefault("named", {})
    for name, kind in types.items():
        entry = named.get(name) or {"type": kind, "help": NAMED[name].help}
        entry["type"] = kind
        entry["stats"] = _observe(entry.get("stats"), NAMED[name].per_run(summary))
        named[name] = entry
    steps = state.setdefault("steps", {})
    outcomes = {o.step: o for o in summary.steps if o.section == "steps"}
    for step_id, config in tracked.items():
        result = outcomes.get(step_id)
        if result is None or result.state in ("Skipped", "NotRun"):
            continue
        entry = steps.get(step_id) or {"success": 0, "failure": 0}
        entry["labels"] = dict(config.custom_labels)
        if config.track_duration and result.attempts:
            entry["duration"] = _observe(entry.get("duration"), result.duration)
        if config.track_success:
            entry["failure" if result.failed else "success"] += 1
        steps[step_id] = entry
    return state


def alert_values(state: dict[str, Any], summary: RunSummary) -> dict[str, float]:
    """Every named metric as an alert compares it, after this run has been added to `state`."""
    runs = sum(state["runs"].values())
    history = {"success_rate": state["runs"].get("success", 0) / runs if runs else 0.0}
    history["failure_count"] = float(state["runs"].get("failure", 0))
    values = {}
    for name, named in NAMED.items():
        stats = state.get("named", {}).get(name, {}).get("stats")
        if named.alert_on == "run":
            values[name] = named.per_run(summary)
        elif stats:  # recorded for every run since it was declared
            values[name] = stats["sum"] / stats["count"] if named.alert_on == "mean" else stats["sum"]
        elif name in history:
            values[name] = history[name]
        else:  # not declared, so not accumulated: this run's value is the most we know
            values[name] = named.per_run(summary)
    return values


# -- Prometheus families (pure) ---------------------------------------------------------------
def _histogram(metric: Metric, name: str, labels: dict[str, str], stats: dict[str, Any]) -> None:
    for bound, count in zip(BUCKETS, stats["buckets"], strict=True):
        metric.add_sample(f"{name}_bucket", labels | {"le": floatToGoString(bound)}, count)
    metric.add_sample(f"{name}_count", labels, stats["count"])
    metric.add_sample(f"{name}_sum", labels, stats["sum"])


def families(states: list[dict[str, Any]]) -> list[Metric]:
    """The Prometheus families of these workflows' states, one family per name."""
    found: dict[str, Metric] = {}

    def family(name: str, help_text: str, kind: str) -> Metric | None:
        metric = found.setdefault(name, Metric(name, help_text, kind))
        return metric if metric.type == kind else None  # same name, other type: first one wins

    for state in states:
        workflow = {"workflow": state["workflow"]}
        runs = family(f"{PREFIX}runs", "Workflow runs by outcome.", "counter")
        for outcome, count in sorted(state["runs"].items()):
            runs.add_sample(f"{PREFIX}runs_total", workflow | {"outcome": outcome}, count)
        last = family(f"{PREFIX}last_run_timestamp", "When the newest run ended (Unix time).", "gauge")
        last.add_sample(f"{PREFIX}last_run_timestamp", workflow, state["last_run"]["finished"])
        for name, entry in sorted(state.get("named", {}).items()):
            full, kind, stats = PREFIX + name, entry["type"], entry["stats"]
            metric = family(full, entry["help"], kind)
            if metric is None:
                continue
            if kind == "histogram":
                _histogram(metric, full, workflow, stats)
            elif kind == "summary":
                metric.add_sample(f"{full}_count", workflow, stats["count"])
                metric.add_sample(f"{full}_sum", workflow, stats["sum"])
            elif kind == "counter":
                metric.add_sample(f"{full}_total", workflow, stats["sum"])
            else:
                rate = NAMED[name].alert_on == "mean"
                metric.add_sample(full, workflow, stats["sum"] / stats["count"] if rate else stats["last"])
        for step_id, entry in sorted(state.get("steps", {}).items()):
            labels = entry["labels"] | workflow | {"step": step_id}
            if entry.get("duration"):
                name = f"{PREFIX}step_duration_seconds"
                _histogram(
                    family(name, "How long each tracked step took.", "histogram"),
                    name,
                    labels,
                    entry["duration"],
                )
            if entry["success"] or entry["failure"]:
                steps = family(f"{PREFIX}step_runs", "Tracked steps' runs by outcome.", "counter")
                for outcome in ("success", "failure"):
                    steps.add_sample(
                        f"{PREFIX}step_runs_total", labels | {"outcome": outcome}, entry[outcome]
                    )
    return list(found.values())


class MetricsCollector(Collector):
    """Serves the states `read` returns (read again at every scrape)."""

    def __init__(self, read: Callable[[], list[dict[str, Any]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        yield from families(self.read())


# -- files ------------------------------------------------------------------------------------
def metrics_dir() -> Path:
    from flows.local_server import opsflow_home

    return opsflow_home() / "metrics"


def read_states(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every workflow's state in the directory; an unreadable file is left out."""
    states = []
    for path in sorted((directory or metrics_dir()).glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            states.append(json.loads(path.read_text()))
    return states


@dataclass
class Recorded:
    state: dict[str, Any]
    values: dict[str, float]
    json_path: Path
    prom_path: Path


def record_run(
    loaded: LoadedWorkflow, graph: Graph, summary: RunSummary, directory: Path | None = None
) -> Recorded:
    """Add the run to `<workflow>.json` and regenerate `<workflow>.prom`, under a lock (two runs
    of one workflow may end together), each file written to a temporary name and renamed."""
    directory = directory or metrics_dir()
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{summary.workflow}.json"
    prom_path = directory / f"{summary.workflow}.prom"
    with open(directory / f".{summary.workflow}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            previous = json.loads(json_path.read_text())
        off = loaded.spec.metrics is not None and not loaded.spec.metrics.enabled
        state = update_state(previous, summary, declared(loaded), {} if off else tracked_steps(graph))
        temporary = json_path.with_name(f".{json_path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, json_path)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MetricsCollector(lambda: [state]))
        write_to_textfile(str(prom_path), registry)
    return Recorded(state, alert_values(state, summary), json_path, prom_path)
