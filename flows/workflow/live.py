"""The live progress view on a terminal: steps, states, elapsed time; log lines scroll above it.

Only used when stderr is a TTY; elsewhere the run prints plain log lines.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from flows.workflow import report
from flows.workflow.plan import Plan
from flows.workflow.units import format_duration

ICONS = {
    "Pending": ("·", "dim"),
    "Running": ("▶", "cyan"),
    "Completed": ("✓", "green"),
    "Restored": ("↺", "green"),  # completed in the run that `resume` continues
    "Skipped": ("↷", "yellow"),
    "Failed": ("✗", "red"),
    "TimedOut": ("⧗", "red"),
    "NotRun": ("–", "dim"),
}
LOG_FORMAT = "[%(asctime)s] [%(levelname)s] [%(flow_run_name)s] %(message)s"


class LiveView:
    def __init__(self, plan: Plan, *, level: int = logging.INFO) -> None:
        self.title = plan.workflow
        self.rows: dict[str, dict[str, Any]] = {
            s.id: {"depth": s.depth, "state": "Skipped" if s.skip else "Pending", "group": s.kind == "group"}
            for s in plan.steps
        }
        self.total = sum(1 for r in self.rows.values() if not r["group"])
        self.started = time.monotonic()
        self.console = Console(stderr=True)
        self.live = Live(
            console=self.console, get_renderable=self.render, refresh_per_second=4, transient=False
        )
        self.handler = _LiveHandler(self, level)

    def __enter__(self) -> LiveView:
        self.live.start()
        report.listeners.append(self.on_event)
        return self

    def __exit__(self, *exc: object) -> None:
        report.listeners.remove(self.on_event)
        self.live.stop()

    def on_event(self, event: str, step_id: str, outcome: report.StepOutcome | None) -> None:
        # hooks and prerequisites appear as they run; the progress counts the plan's steps only
        row = self.rows.setdefault(step_id, {"depth": 0, "state": "Pending", "group": False, "hook": True})
        if event == "started":
            row["state"], row["since"] = "Running", time.monotonic()
        elif outcome is not None:
            row["state"], row["took"] = outcome.state, outcome.duration

    def print(self, text: str) -> None:
        self.live.console.print(Text(text), soft_wrap=True)

    def render(self) -> Group:
        table = Table.grid(padding=(0, 1))
        for step_id, row in self.rows.items():
            icon, style = ICONS.get(row["state"], ("?", ""))
            if row["group"]:
                table.add_row(Text("  " * row["depth"] + step_id, style="bold"), "", "")
                continue
            took = row.get("took")
            if row["state"] == "Running":
                took = time.monotonic() - row["since"]
            table.add_row(
                Text("  " * row["depth"] + f"{icon} {step_id}", style=style),
                Text(row["state"], style=style),
                Text(format_duration(took) if took else ""),
            )
        done = sum(
            1
            for r in self.rows.values()
            if not r["group"] and not r.get("hook") and r["state"] not in ("Pending", "Running")
        )
        percent = int(100 * done / self.total) if self.total else 100
        elapsed = format_duration(time.monotonic() - self.started)
        header = Text(f"{self.title}: {done}/{self.total} steps ({percent}%), {elapsed}", style="bold")
        return Group(header, table)


class _LiveHandler(logging.Handler):
    """Run log lines printed above the live view in seed 003's format."""

    def __init__(self, view: LiveView, level: int) -> None:
        super().__init__(level)
        self.view = view
        self.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if getattr(record, "task_run_name", None):
                record = logging.makeLogRecord(
                    record.__dict__ | {"msg": f"{record.task_run_name}: {record.getMessage()}", "args": ()}
                )
            if not hasattr(record, "flow_run_name"):
                record.flow_run_name = self.view.title
            self.view.print(self.format(record))
        except Exception:  # a display problem must never fail a run
            self.handleError(record)
