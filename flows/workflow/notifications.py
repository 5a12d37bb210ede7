"""A workflow's `notifications: {channels, events}`: messages at start and end of a run.

Each message names the workflow, environment, run, outcome, duration, failed steps and a link
to the run in the Prefect UI; channels are apprise URLs configured by name (flows/notify.py).
A channel without a URL is one warning at the start; a receiver that is down or slow is a
warning, never a failed or stalled run. `requires_approval` is sent by the approval step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flows.notify import notify_channels
from flows.secrets import scrub_text

_TYPES = {"started": "info", "completed": "success", "failed": "failure", "rolled_back": "warning"}


def run_link(run_id: str) -> str | None:
    try:
        from prefect.utilities.urls import url_for

        return url_for("flow-run", obj_id=run_id)
    except Exception:  # no UI configured, or not a run id
        return None


def message(
    event: str,
    workflow: str,
    environment: str,
    run_id: str,
    *,
    duration: float | None = None,
    failed: Sequence[str] = (),
    detail: str = "",
    kind: str = "workflow",
) -> tuple[str, str]:
    """(title, body) of a notification about a workflow (or a procedure: `kind`). Pure but for the UI link."""
    title = f"opsflow: {workflow} {event.replace('_', ' ')} ({environment})"
    lines = [f"{kind}: {workflow}", f"environment: {environment}", f"run: {run_id}", f"event: {event}"]
    if duration is not None:
        lines.append(f"duration: {duration:.1f}s")
    if failed:
        lines.append(f"failed steps: {', '.join(failed)}")
    if detail:
        lines.append(detail)
    link = run_link(run_id)
    if link:
        lines.append(f"link: {link}")
    return title, "\n".join(lines)


class RunNotifier:
    """Sends a run's events to its configured channels."""

    def __init__(
        self,
        notifications: Any,
        workflow: str,
        environment: str,
        run_id: str,
        logger: Any,
        mask: Callable[[str], str] = scrub_text,
    ) -> None:
        self.channels = list(notifications.channels) if notifications else []
        self.events = set(notifications.events) if notifications else set()
        self.workflow, self.environment, self.run_id, self.logger = workflow, environment, run_id, logger
        self.mask = mask  # the run's secrets stay out of what receivers get
        self._warned_missing = False

    def emit(self, event: str, **details: Any) -> None:
        if event not in self.events or not self.channels:
            return
        title, body = message(event, self.workflow, self.environment, self.run_id, **details)
        title, body = self.mask(title), self.mask(body)
        missing = notify_channels(
            self.channels, title, body, self.logger.warning, notify_type=_TYPES.get(event, "info")
        )
        if missing and not self._warned_missing:
            self._warned_missing = True
            names = ", ".join(f"OPSFLOW_NOTIFY_{m.upper()}" for m in missing)
            self.logger.warning(
                f"notification channel(s) {', '.join(missing)} have no URL: set {names} "
                "or the opsflow-notification-channels block `default`"
            )
