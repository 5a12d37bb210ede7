"""`monitoring.log_aggregation: true`: every line of a run as JSON, for a log shipper to tail.

One file per run, `<dir>/<workflow>/<YYYY-MM-DD>/<workflow_id>.jsonl` (`dir`:
`OPSFLOW_LOG_AGGREGATION_DIR`, default `$OPSFLOW_HOME/logs/aggregate`), one JSON object per
line: every output line of every step, uncapped (the Prefect log keeps only the first 1,000),
and an event line when the run starts and ends and when each step starts and settles.

Each line is written whole under a lock and flushed at once, so steps running in parallel never
interleave inside a line, a shipper tailing the file sees lines as they come, and a killed run
loses nothing it had written. The run's secrets (flows/masking.py: secret parameters and
outputs, by value) and passwords inside URLs are masked in every message.

`build_record` and `Masker` are pure; the rest is the file and the hooks the flow calls:
`start` (run.py), `tee` (a step's lines, tasks.py), the step listener (report.py's `notify`),
`finish` and `closing`.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from flows.masking import Masker
from flows.secrets import is_secret_name, safe_parameters, scrub_text
from flows.workflow.report import RunSummary, StepOutcome, listeners
from flows.workflow.spec import Workflow

LineSink = Callable[[str, str], None]

_LEVELS = {"Failed": "ERROR", "TimedOut": "ERROR", "NotRun": "WARNING"}


def enabled(spec: Workflow) -> bool:
    return bool(spec.monitoring and spec.monitoring.log_aggregation)


def aggregation_dir() -> Path:
    from flows.local_server import opsflow_home
    from flows.settings import get_settings

    return get_settings().log_aggregation_dir or opsflow_home() / "logs" / "aggregate"


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("._")[:100] or "run"


def aggregate_path(root: Path, workflow: str, workflow_id: str, started: datetime) -> Path:
    day = started.astimezone(UTC).strftime("%Y-%m-%d")
    return root / _safe_name(workflow) / day / f"{_safe_name(workflow_id)}.jsonl"


def planned_location(spec: Workflow) -> str | None:
    """Where a run's aggregated log will go, as `plan` shows it; None when it is off."""
    if not enabled(spec):
        return None
    return str(aggregation_dir() / _safe_name(spec.name) / "<YYYY-MM-DD>" / "<workflow_id>.jsonl")


# -- pure: masking and records ----------------------------------------------------------------


@dataclass(frozen=True)
class RunIdentity:
    """The fields every record of one run carries."""

    workflow: str
    workflow_id: str
    environment: str
    flow_run_id: str | None


def timestamp(at: datetime) -> str:
    """UTC, ISO 8601 with microseconds and `Z`: what Loki, Elasticsearch and Vector parse as is."""
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_record(
    run: RunIdentity,
    stream: str,
    message: str,
    *,
    at: datetime,
    level: str = "INFO",
    step: str | None = None,
    attempt: int | None = None,
    mask: Callable[[str], str] = scrub_text,
    **fields: Any,
) -> dict[str, Any]:
    """One line of the file. `stream`: stdout, stderr or event; `fields`: an event's extras
    (event, state, exit_code, duration...), strings masked like the message."""
    record: dict[str, Any] = {
        "timestamp": timestamp(at),
        "level": level,
        "workflow": run.workflow,
        "workflow_id": run.workflow_id,
        "environment": run.environment,
        "flow_run_id": run.flow_run_id,
        "step": step,
        "attempt": attempt,
        "stream": stream,
        "message": mask(message),
    }
    for key, value in fields.items():
        record[key] = mask(value) if isinstance(value, str) else value
    return record


def step_record(run: RunIdentity, outcome: StepOutcome, at: datetime, mask: Callable[[str], str]) -> dict:
    """The event of a step that settled (completed, failed, skipped, not run, restored)."""
    facts = [outcome.state]
    if outcome.exit_code is not None:
        facts.append(f"exit code {outcome.exit_code}")
    if outcome.attempts:
        facts.append(f"{outcome.duration:.3f}s, attempt {outcome.attempts}")
    message = f"step `{outcome.step}` settled: {', '.join(facts)}" + (
        f" ({outcome.reason})" if outcome.reason else ""
    )
    return build_record(
        run,
        "event",
        message,
        at=at,
        level=_LEVELS.get(outcome.state, "INFO"),
        step=outcome.step,
        attempt=outcome.attempts or None,
        mask=mask,
        event="step_settled",
        section=outcome.section,
        state=outcome.state,
        exit_code=outcome.exit_code,
        duration=round(outcome.duration, 3),
        reason=outcome.reason or None,
    )


def finished_record(run: RunIdentity, summary: RunSummary, at: datetime, mask: Callable[[str], str]) -> dict:
    message = f"run finished: {summary.state} in {summary.duration:.3f}s" + (
        f" ({summary.message})" if summary.message else ""
    )
    return build_record(
        run,
        "event",
        message,
        at=at,
        level="ERROR" if summary.exit_code else "INFO",
        mask=mask,
        event="run_finished",
        state=summary.state,
        exit_code=summary.exit_code,
        duration=round(summary.duration, 3),
        counts=summary.counts(),
    )


# -- the file ---------------------------------------------------------------------------------
class LogAggregator:
    """One run's JSON-lines file; `write` is safe from any thread."""

    def __init__(self, path: Path, run: RunIdentity, mask: Masker, warn: Callable[[str], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.run, self.mask, self.warn = path, run, mask, warn
        # append: a second writer (a resumed run never reuses an id, but a rerun by hand might)
        # adds lines instead of truncating what a shipper may not have read yet
        self.file: TextIO | None = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self.lock = threading.Lock()

    def write(self, build: Callable[[datetime], dict[str, Any]]) -> None:
        """Build the record (given its time) and write it as one line. The time is taken under
        the lock, so the file is in timestamp order (Loki refuses older lines in a stream)."""
        with self.lock:
            if self.file is None:
                return
            line = json.dumps(build(datetime.now(UTC)), ensure_ascii=False, default=str) + "\n"
            try:
                self.file.write(line)
                self.file.flush()  # to the OS: a SIGKILL of this process then loses nothing
            except OSError as exc:
                self.file = None
                self.warn(f"log aggregation stopped, {self.path} is not writable: {exc}")

    def output(self, step: str, attempt: int, stream: str, text: str) -> None:
        self.write(
            lambda at: build_record(self.run, stream, text, at=at, step=step, attempt=attempt, mask=self.mask)
        )

    def event(self, event: str, message: str, *, level: str = "INFO", **fields: Any) -> None:
        self.write(
            lambda at: build_record(
                self.run, "event", message, at=at, level=level, mask=self.mask, event=event, **fields
            )
        )

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None


_active: dict[str, LogAggregator] = {}  # by workflow id (the flow run's id), like state._active
_active_lock = threading.Lock()


def _current_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "local")


def current() -> LogAggregator | None:
    """The aggregator of the flow run this thread works for, if it aggregates."""
    if not _active:
        return None
    with _active_lock:
        return _active.get(_current_run_id())


def start(
    spec: Workflow,
    summary: RunSummary,
    parameters: Mapping[str, Any],
    logger: Any,
    *,
    path_to_file: str | None = None,
    mask: Masker | None = None,
    is_secret: Callable[[str], bool] = is_secret_name,
) -> Path | None:
    """Open the run's file and write `run_started`, when the workflow asks for it; the path
    goes to the run log and the summary. A file that cannot be opened is a warning, not a
    failed run (as with metrics)."""
    if not enabled(spec):
        return None
    run = RunIdentity(
        summary.workflow, summary.workflow_id, summary.environment, _flow_run_id_or_none(summary.workflow_id)
    )
    started = datetime.fromtimestamp(summary.started, UTC)
    path = aggregate_path(aggregation_dir(), summary.workflow, summary.workflow_id, started)
    try:
        aggregator = LogAggregator(
            path, run, mask or Masker.for_parameters(parameters, is_secret), logger.warning
        )
    except OSError as exc:
        logger.warning(f"log aggregation is off for this run: cannot open {path}: {exc}")
        return None
    with _active_lock:
        _active[summary.workflow_id] = aggregator
    if _on_step_event not in listeners:
        listeners.append(_on_step_event)
    summary.aggregated_log = str(path)
    aggregator.event(
        "run_started",
        f"run started: {summary.workflow} on {summary.environment}",
        state="Running",
        file=path_to_file,
        parameters=safe_parameters(dict(parameters), is_secret),
    )
    logger.info(f"log aggregation: every line of this run goes to {path} (JSON lines)")
    return path


def _flow_run_id_or_none(workflow_id: str) -> str | None:
    return None if workflow_id == "local" else workflow_id


def tee(sink: LineSink, step_id: str, attempt: int) -> LineSink:
    """`sink` (the Prefect log), with every line also written to the run's file when it
    aggregates; the file first, so a line is kept even if logging it fails."""
    aggregator = current()
    if aggregator is None:
        return sink

    def both(stream: str, text: str) -> None:
        aggregator.output(step_id, attempt, stream, text)
        sink(stream, text)

    return both


def _on_step_event(event: str, step_id: str, outcome: StepOutcome | None) -> None:
    """report.py's listener: step started / settled events of the run the caller works for."""
    aggregator = current()
    if aggregator is None:
        return
    if event == "settled" and outcome is not None:
        aggregator.write(lambda at: step_record(aggregator.run, outcome, at, aggregator.mask))
    elif event == "started":
        aggregator.event("step_started", f"step `{step_id}` started", step=step_id)


def finish(summary: RunSummary) -> None:
    """Write `run_finished` (state, exit code, duration) and close the file."""
    with _active_lock:
        aggregator = _active.pop(summary.workflow_id, None)
    if aggregator is not None:
        aggregator.write(lambda at: finished_record(aggregator.run, summary, at, aggregator.mask))
        aggregator.close()


@contextlib.contextmanager
def closing() -> Iterator[None]:
    """Around the flow's body: a run that ends on an error before `finish` still gets its
    `run_finished` line (state Failed, the error and its exit code) and a closed file."""
    run_id = _current_run_id()
    try:
        yield
    except BaseException as exc:
        _abandon(run_id, str(exc) or type(exc).__name__, getattr(exc, "exit_code", 1))
        raise
    _abandon(run_id, "the run ended without a summary", 1)


def _abandon(run_id: str, reason: str, exit_code: int) -> None:
    with _active_lock:
        aggregator = _active.pop(run_id, None)
    if aggregator is None:
        return
    aggregator.event(
        "run_finished",
        f"run finished: Failed ({reason})",
        level="ERROR",
        state="Failed",
        exit_code=exit_code,
        reason=reason,
    )
    aggregator.close()
