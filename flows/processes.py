"""What /proc tells of this machine's processes: whether one still runs, and is the one recorded.

A pid alone names a process only while it lives: the kernel hands it out again. A pid with its
start time (clock ticks since boot) and the boot's id names one process ever, so records of
runs, locks and step commands use the three to tell "still running" from "killed". Imports
nothing of ours; where /proc is missing, the kernel is asked with signal 0 instead.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path


@functools.cache
def boot_id() -> str:
    """This boot of this machine (process start times count from it); "" where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks since boot) of a process, if it exists."""
    try:
        text = Path(f"/proc/{pid}/stat").read_bytes()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(b")") + 2 :].split()  # the name in parentheses may hold spaces
    return fields[0].decode(), int(fields[2]), int(fields[19])


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (ticks since boot): with the pid, it names one process ever."""
    stat = read_stat(pid)
    return stat[2] if stat else None


def pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def group_alive(group: int, ticks: int | None, boot: str = "") -> bool:
    """Is a process of the group led by the process (`group`, started at `ticks`) still running?

    The leader may be gone while what it started lives on in its group; the group's number
    cannot be given to a new process while any member lives, so a leader with another start
    time means the recorded group is over. Zombies do not count: they run nothing."""
    if boot and boot_id() and boot != boot_id():
        return False  # the machine restarted since
    if not Path("/proc/self/stat").exists():
        return _signal_zero(lambda: os.killpg(group, 0))
    leader = read_stat(group)
    if leader is not None and ticks is not None and leader[2] != ticks:
        return False
    for pid in pids():
        stat = read_stat(pid)
        if stat is not None and stat[1] == group and stat[0] != "Z":
            return True
    return False


def process_alive(pid: int, started: int | None = None) -> bool:
    """Whether process `pid` of this host runs (a zombie does not), and, when `started` is
    given, is the one that started then."""
    if not Path("/proc/self/stat").exists():
        return _signal_zero(lambda: os.kill(pid, 0))
    found = read_stat(pid)
    if found is None or found[0] == "Z":
        return False
    return started is None or found[2] == started


def _signal_zero(ask: Callable[[], None]) -> bool:
    try:
        ask()
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is someone else's
    return True
