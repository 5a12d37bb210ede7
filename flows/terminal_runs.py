"""Prefect settings for flows run in the terminal's own process (`run`, `files run`, `db ...`).

Prefect sends a flow-run heartbeat from a thread that sleeps in one-second steps and is
joined when the run ends: every flow run (and every subflow) then waits up to a second for
it, measured here at ~0.8 s of a 1.1 s backup flow. Heartbeats let the server notice a worker
that died; a terminal run's process is the user's own, and it stops its commands and ends
its run on Ctrl-C. So terminal runs go without them, unless the user asked for them by
setting `PREFECT_FLOWS_HEARTBEAT_FREQUENCY`. Deployment runs on workers keep Prefect's default.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def terminal_run() -> Iterator[None]:
    if os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
