"""A flow run's log lines as the Prefect UI shows them, read back through the API."""

from __future__ import annotations

import time
from collections.abc import Callable
from uuid import UUID


def run_log_messages(
    flow_run_id: UUID | str, until: Callable[[list[str]], bool] = bool, seconds: float = 90
) -> list[str]:
    """The run's log messages once `until(messages)` holds (or the deadline passed: the caller's
    assertion then shows what arrived). Logs reach the API in batches from a background worker,
    later still on a busy machine, so one read right after the run may find none yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while True:
            messages: list[str] = []
            while page := client.read_logs(log_filter=only_this_run, limit=200, offset=len(messages)):
                messages += [log.message for log in page]
            if until(messages) or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)
