"""The guardian: stops the commands of an opsflow process that died, however it died.

`children.py` starts one per opsflow process, in a session of its own (so a kill of opsflow's
process group does not take it along), with the read end of a pipe as its stdin. opsflow holds
the only write end and reports each command as it starts and ends; when the pipe reaches
end-of-file, opsflow is gone (exited, or killed even by SIGKILL) and every command still running
is stopped: SIGTERM to its process group, SIGKILL to what is left after a grace period.

Run as a script (`python -I -S guardian.py TOKEN GRACE`): standard library only, nothing of
opsflow, so it starts in milliseconds. Lines on stdin:

    p SEQ         command SEQ is about to start
    + SEQ PGID    it started, as the leader of process group PGID
    - SEQ         it ended (or never started)

A command opsflow died while starting (announced, not yet reported started) is found by the
`OPSFLOW_COMMAND_ID=TOKEN.SEQ` it carries in its environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

TOKEN_VAR = "OPSFLOW_COMMAND_ID"
#: What a guardian calls itself while it stops commands, so new runs can wait for it.
REAPING_NAME = "opsflow-reaping"
POLL_SECONDS = 0.05
BATCH_SECONDS = 0.01
#: How long a command opsflow died while starting may take to reach exec (and show its token).
PENDING_SETTLE_SECONDS = 0.5


def main(argv: list[str]) -> int:
    token, grace = argv[1], float(argv[2])
    with contextlib.suppress(OSError):
        os.chdir("/")  # hold no directory of the run busy
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: dict[int, int] = {}  # seq -> process group
    pending: set[int] = set()
    rest = b""
    while chunk := os.read(0, 65536):
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            apply(line.decode("ascii", "replace").split(), groups, pending)
        # Let lines gather: a batch running a command per file sends three per command, and
        # waking once per line would cost more than the commands' own bookkeeping.
        time.sleep(BATCH_SECONDS)
    reap(set(groups.values()), pending, token, grace)
    return 0


def apply(words: list[str], groups: dict[int, int], pending: set[int]) -> None:
    try:
        kind, seq = words[0], int(words[1])
        if kind == "p":
            pending.add(seq)
        elif kind == "+":
            pending.discard(seq)
            groups[seq] = int(words[2])
        elif kind == "-":
            pending.discard(seq)
            groups.pop(seq, None)
    except (IndexError, ValueError):
        pass  # a line cut short by opsflow's death


def reap(groups: set[int], pending: set[int], token: str, grace: float) -> None:
    """SIGTERM every group, wait up to `grace` for them to go, SIGKILL what is left."""
    if not groups and not pending:
        return
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(REAPING_NAME)
    started = time.monotonic()
    targets: set[int] = set()
    while True:
        fresh = (groups | starting_groups(token, pending)) - targets
        for group in fresh:
            signal_group(group, signal.SIGTERM)
        targets |= fresh
        waited = time.monotonic() - started
        settling = pending and waited < PENDING_SETTLE_SECONDS
        if waited >= grace or not (settling or any(group_exists(g) for g in targets)):
            break
        time.sleep(POLL_SECONDS)
    for group in targets | starting_groups(token, pending):
        signal_group(group, signal.SIGKILL)


def starting_groups(token: str, pending: set[int]) -> set[int]:
    """Process groups of processes that carry the id of a command announced as starting."""
    if not pending:
        return set()
    marker = f"{TOKEN_VAR}={token}.".encode()
    found = set()
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:  # gone, or not ours
            continue
        at = environ.find(marker)
        if at < 0 or (at and environ[at - 1] != 0):
            continue
        end = environ.find(b"\0", at)
        try:
            seq = int(environ[at + len(marker) : end if end >= 0 else None])
            if seq in pending:
                found.add(os.getpgid(pid))
        except (ValueError, OSError):
            continue
    found.discard(os.getpgid(0))
    return {group for group in found if group > 1}


def signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def group_exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv))
