"""Whether the process that owns a `running` record is still alive: shared by workflow runs
and batch jobs, so `history` and `files history` tell a killed run the same way.

A record carries the host and pid of the process that wrote it. A process killed outright
(SIGKILL, a lost machine) never closes its record; on the same host, a pid that is gone
means exactly that. On another host nothing can be told, and the record stays `running`.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from flows import processes


def this_process() -> dict[str, Any]:
    """The `host` and `pid` to record with a run started by this process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def process_alive(pid: int | None) -> bool:
    """Whether `pid` is a live process on this host (this very process counts as gone: a
    record it reads about itself is one it is not running; a zombie counts as gone too)."""
    if not pid or pid == os.getpid():
        return False
    return processes.process_alive(pid)


def shown_state(state: str, host: str | None, pid: int | None) -> str:
    """`killed` for a record still `running` whose process is gone on this host, else `state`."""
    if state == "running" and host == socket.gethostname() and not process_alive(pid):
        return "killed"
    return state


def owner_alive(state: str, host: str | None, pid: int | None) -> bool:
    """Whether a `running` record's process is known to be alive on this host."""
    return state == "running" and host == socket.gethostname() and process_alive(pid)
