"""Waiting, in a test, for a flow run to pause for approval."""

from __future__ import annotations

import time


def wait_paused(timeout: float = 60) -> str:
    """The id of the one run waiting for approval (read through the API, as `approve` lists it)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["PAUSED"])))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            waiting = client.read_flow_runs(flow_run_filter=paused)
            if waiting:
                assert len(waiting) == 1, waiting
                return str(waiting[0].id)
            time.sleep(0.5)
    raise AssertionError("no run paused for approval")
