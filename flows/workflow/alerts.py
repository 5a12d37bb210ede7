"""`monitoring.alerts`: conditions on a run's metrics, and the notifications of those that fire.

A condition is `METRIC OP NUMBER` (`deployment_duration > 1800`, `success_rate < 0.9`), read
by a regular expression, never evaluated as code. Its metric must be one the engine computes
(flows/workflow/metrics.py `NAMED`); both are checked by `validate`. A firing alert goes to the
workflow's `notifications.channels` with its severity in the title and body.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flows.notify import notify_channels
from flows.workflow.notifications import message

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<number>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_NOTIFY_TYPES = {"info": "info", "warning": "warning", "error": "failure", "critical": "failure"}


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


def parse_condition(text: str) -> Condition:
    """`metric op number`; ValueError saying what is wrong otherwise."""
    match = _CONDITION.match(text)
    if not match:
        raise ValueError(
            f"alert condition `{text}` is not `METRIC OP NUMBER` "
            f"(OP one of {' '.join(OPERATORS)}), e.g. `deployment_duration > 1800`"
        )
    return Condition(match["metric"], match["op"], float(match["number"]))


@dataclass(frozen=True)
class Firing:
    """An alert whose condition holds for this run."""

    condition: str
    severity: str
    value: float


def firing_alerts(monitoring: Any, values: dict[str, float], *, failed: bool) -> list[Firing]:
    """The alerts of `monitoring` that hold for these metric values (and `alert_on_failure`)."""
    if monitoring is None:
        return []
    fired = []
    for alert in monitoring.alerts:
        condition = parse_condition(alert.condition)
        value = values[condition.metric]
        if condition.holds(value):
            fired.append(Firing(str(condition), alert.severity, value))
    if monitoring.alert_on_failure and failed:
        fired.append(Firing("run failed", "error", 1.0))
    return fired


def alert_message(firing: Firing, workflow: str, environment: str, run_id: str) -> tuple[str, str]:
    """(title, body) of one firing alert: the severity leads both."""
    title, body = message(
        "alert",
        workflow,
        environment,
        run_id,
        detail=f"condition: {firing.condition} (value {firing.value:g})",
    )
    severity = firing.severity.upper()
    return f"[{severity}] {title}", f"severity: {severity}\n{body}"


def send_alerts(
    fired: list[Firing],
    channels: list[str],
    workflow: str,
    environment: str,
    run_id: str,
    warn: Callable[[str], None],
) -> None:
    for firing in fired:
        title, body = alert_message(firing, workflow, environment, run_id)
        missing = notify_channels(
            channels, title, body, warn, notify_type=_NOTIFY_TYPES.get(firing.severity, "warning")
        )
        if missing:
            warn(f"alert `{firing.condition}`: channel(s) {', '.join(missing)} have no URL")
