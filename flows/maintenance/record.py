"""What every maintenance procedure shares: its outcome, its log row, its summary in the UI.

A procedure flow builds an `Outcome` inside `recorded(...)`, which writes the
`script_execution_log` row when the procedure starts and completes it when it ends (an
exception's exit code included), then returns `finish(outcome)`: a Prefect markdown artifact
for the UI, and a Failed flow run (`ProcedureFailed`) when the exit code says failure, so the
UI, automations and `trigger --wait` all see the same outcome as the terminal.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from flows.errors import EXIT_DRY_RUN, EXIT_FAILURE, EXIT_OK, OpsflowError
from flows.secrets import safe_parameters, scrub_text


@dataclass
class Outcome:
    """The result of one procedure run, as printed, recorded and returned by its flow."""

    procedure: str
    exit_code: int = EXIT_OK
    message: str = ""
    rows: int | None = None
    bytes: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def fail(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        self.exit_code, self.message = exit_code, message

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ProcedureFailed(OpsflowError):
    """A procedure ended with a failing exit code; carries its outcome for the report."""

    def __init__(self, outcome: dict[str, Any]) -> None:
        super().__init__(outcome.get("message") or f"{outcome['procedure']} failed")
        self.outcome = outcome
        self.exit_code = int(outcome.get("exit_code") or EXIT_FAILURE)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ProcedureFailed, (self.outcome,))


class _QuietExpectedFailures(logging.Filter):
    """A procedure's own errors are expected outcomes with a one-line reason: no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], OpsflowError):
            record.exc_info = None
            record.exc_text = None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_QuietExpectedFailures())


def _flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run

        return flow_run.id
    except Exception:  # outside a flow run
        return None


def _logger() -> Any:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:
        return logging.getLogger("opsflow.maintenance")


@contextmanager
def recorded(name: str, parameters: dict[str, Any], settings: Any) -> Iterator[Outcome]:
    """Run a procedure body with its `script_execution_log` row around it.

    `settings` is the procedure's MaintenanceSettings (its `notify_channels` hear of the
    outcomes in `notify_events`), or just an environment name for a procedure that notifies
    on its own.
    """
    from flows.records.db import session
    from flows.records.procedures import finish_execution, start_execution

    environment = getattr(settings, "environment", settings)
    outcome, started = Outcome(procedure=name), time.monotonic()
    with session() as db:
        execution_id = start_execution(db, name, safe_parameters(parameters), environment, _flow_run_id()).id
    try:
        yield outcome
    except OpsflowError as exc:
        outcome.fail(str(exc), exc.exit_code)
        raise
    except BaseException as exc:
        outcome.fail(scrub_text(f"{type(exc).__name__}: {exc}"), EXIT_FAILURE)
        raise
    finally:
        with session() as db:
            finish_execution(
                db,
                execution_id,
                exit_code=outcome.exit_code,
                message=scrub_text(outcome.message)[:2000] or None,
                rows=outcome.rows,
                bytes_=outcome.bytes,
            )
        channels = getattr(settings, "notify_channels", None)
        if channels:
            _notify(outcome, environment, channels, settings.notify_events, time.monotonic() - started)


def _notify(outcome: Outcome, environment: str, channels: list[str], events: list[str], took: float) -> None:
    """Tell the channels how the procedure ended; a receiver down or slow is only a warning."""
    from flows.notify import notify_channels
    from flows.workflow.notifications import message

    event = "completed" if outcome.exit_code in (EXIT_OK, EXIT_DRY_RUN) else "failed"
    if event not in events:
        return
    detail = f"exit code: {outcome.exit_code}" + (
        f"\n{scrub_text(outcome.message)}" if outcome.message else ""
    )
    title, body = message(
        event,
        outcome.procedure,
        environment,
        _flow_run_id() or "-",
        duration=took,
        detail=detail,
        kind="procedure",
    )
    warn = _logger().warning
    missing = notify_channels(
        channels, title, body, warn, notify_type="success" if event == "completed" else "failure"
    )
    if missing:
        warn(f"notification channel(s) {', '.join(missing)} have no URL: set OPSFLOW_NOTIFY_<NAME>")


def finish(outcome: Outcome, *, table: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Publish the outcome (artifact, log line) and end the flow run accordingly."""
    logger = _logger()
    if outcome.message:
        log = logger.info if outcome.exit_code in (EXIT_OK, EXIT_DRY_RUN) else logger.error
        log(outcome.message)
    _artifact(outcome, table)
    result = outcome.to_dict()
    if outcome.exit_code not in (EXIT_OK, EXIT_DRY_RUN):
        raise ProcedureFailed(result)
    return result


def _artifact(outcome: Outcome, table: list[dict[str, Any]] | None) -> None:
    if _flow_run_id() is None:
        return
    from prefect.artifacts import create_markdown_artifact

    lines = [
        f"## {outcome.procedure}: {'ok' if outcome.exit_code == 0 else f'exit {outcome.exit_code}'}",
        "",
        scrub_text(outcome.message or ""),
        "",
    ]
    if outcome.rows is not None or outcome.bytes is not None:
        lines += [f"rows affected: {outcome.rows or 0} · bytes: {outcome.bytes or 0}", ""]
    if table:
        columns = list(table[0])
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in table[:200]:
            cells = [scrub_text(str(row.get(c, ""))).replace("|", "\\|").replace("\n", " ") for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
    key = re.sub(r"[^a-z0-9-]+", "-", outcome.procedure.lower()).strip("-")
    create_markdown_artifact("\n".join(lines), key=key, description=f"{outcome.procedure} summary")


def details_json(outcome: dict[str, Any]) -> str:
    return json.dumps(outcome, indent=2, default=str)
