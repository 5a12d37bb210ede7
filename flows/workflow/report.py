"""Run -> summary: per step state, attempts, duration, exit code; as a table, JSON or artifact rows.

Pure (no Prefect): the flow fills a `RunSummary`, the command line prints it and the flow
attaches its rows to the run as a table artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from flows.workflow.units import format_duration

# Listeners see each step start and settle; the command line's live view is one.
Listener = Callable[[str, str, "StepOutcome | None"], None]
listeners: list[Listener] = []


def notify(event: str, step_id: str, outcome: StepOutcome | None = None) -> None:
    for listener in list(listeners):
        listener(event, step_id, outcome)


@dataclass
class StepOutcome:
    step: str
    state: str  # Completed | Failed | Skipped | NotRun | TimedOut | Restored (resume)
    section: str = "steps"  # steps | prerequisites | a hook section
    attempts: int = 0
    duration: float = 0.0
    exit_code: int | None = None
    reason: str = ""

    @property
    def failed(self) -> bool:
        return self.state in ("Failed", "TimedOut")


@dataclass
class RunSummary:
    workflow: str
    environment: str
    workflow_id: str
    started: float = field(default_factory=time.time)
    finished: float | None = None
    state: str = "Running"
    exit_code: int = 0
    message: str = ""
    steps: list[StepOutcome] = field(default_factory=list)
    # recovery strategies that fired: {strategy, conditions, actions: [{action, result}]}
    recovery: list[dict[str, Any]] = field(default_factory=list)
    aggregated_log: str = ""  # monitoring.log_aggregation: the run's JSON-lines file (logship.py)

    @property
    def duration(self) -> float:
        return (self.finished or time.time()) - self.started

    def add(self, outcome: StepOutcome) -> StepOutcome:
        self.steps.append(outcome)
        notify("settled", outcome.step, outcome)
        return outcome

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for step in self.steps:
            counts[step.state] = counts.get(step.state, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        data = {
            "workflow": self.workflow,
            "environment": self.environment,
            "workflow_id": self.workflow_id,
            "state": self.state,
            "exit_code": self.exit_code,
            "message": self.message,
            "duration": round(self.duration, 3),
            "counts": self.counts(),
            "steps": [asdict(s) | {"duration": round(s.duration, 3)} for s in self.steps],
        } | ({"recovery": self.recovery} if self.recovery else {})
        if self.aggregated_log:
            data["aggregated_log"] = self.aggregated_log
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        summary = cls(
            workflow=data["workflow"],
            environment=data["environment"],
            workflow_id=data["workflow_id"],
            state=data["state"],
            exit_code=data["exit_code"],
            message=data.get("message", ""),
            aggregated_log=data.get("aggregated_log", ""),
        )
        summary.finished = summary.started
        summary.started -= data.get("duration", 0.0)
        summary.steps = [StepOutcome(**s) for s in data["steps"]]
        return summary

    def rows(self) -> list[dict[str, Any]]:
        """Flat rows for a table artifact or a terminal table."""
        return [
            {
                "step": s.step if s.section == "steps" else f"{s.section}: {s.step}",
                "state": s.state,
                "attempts": s.attempts,
                "duration": format_duration(s.duration) if s.attempts else "-",
                "exit code": "-" if s.exit_code is None else s.exit_code,
                "note": s.reason,
            }
            for s in self.steps
        ]

    def markdown(self) -> str:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.counts().items()))
        head = f"**{self.workflow}** on `{self.environment}`: **{self.state}** in {format_duration(self.duration)}"
        text = f"{head} ({counts})" + (f"\n\n{self.message}" if self.message else "")
        return text + (
            f"\n\nAggregated log (JSON lines): `{self.aggregated_log}`" if self.aggregated_log else ""
        )
