"""Child processes that die with opsflow: `spawn` starts a command its guardian will stop.

Commands (workflow steps, file processors, PostgreSQL client programs) run in sessions of
their own, so a timeout can kill all a command started and a terminal's Ctrl-C does not reach
them before opsflow decides. The price: when opsflow itself is killed (SIGKILL of its process
or of its whole group, a worker cancelling the flow run hard), nothing takes them down, and a
step kept running alone and then ran a second time on `resume`. PR_SET_PDEATHSIG does not close
that: it covers only the process it is set on (not the `sleep` a step's shell started), it
fires when the *thread* that forked the child exits, and it needs code between fork and exec
(unsafe in a threaded process, and it forces fork instead of vfork on every command).

So each opsflow process starts, at its first command, one guardian (`guardian.py`, a few
milliseconds of a bare interpreter) in a session of its own, holding the read end of a pipe
of which opsflow holds the only write end. Each command is announced before it is started and
reported with its process group after, and released when it ends: three short writes, a few
microseconds. When opsflow is gone the pipe reads end-of-file, and the guardian stops every
group still registered (SIGTERM, then SIGKILL after a grace period).

`resume` and new runs must also never overlap a command that a killed run left running;
`processes.group_alive` (with the start time and boot id recorded when a step starts) and
`wait_for_reapers` are how they check.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from flows import processes
from flows.guardian import REAPING_NAME, TOKEN_VAR

#: How long the guardian lets a command's group handle SIGTERM before SIGKILL (as on timeout).
GRACE_SECONDS = 3.0
_SCRIPT = Path(__file__).with_name("guardian.py")


class Guardian:
    """One guardian process and the write end of its pipe."""

    def __init__(self, grace: float = GRACE_SECONDS) -> None:
        self.token = secrets.token_hex(8)
        read_end, self.fd = os.pipe()  # both close-on-exec: no command inherits the write end
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_SCRIPT), self.token, str(grace)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a kill of opsflow's group must not take the guardian along
            )
        except BaseException:
            os.close(self.fd)
            raise
        finally:
            os.close(read_end)

    def send(self, text: str) -> bool:
        """Write lines to the guardian; False when it is gone. Each write is one atomic pipe write."""
        try:
            os.write(self.fd, text.encode())
        except OSError:
            return False
        return True

    def close(self) -> None:
        """End the guardian as opsflow's death would: it stops every command still registered."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


_lock = threading.Lock()
_guardian: Guardian | None = None
_unguarded = False  # the guardian could not be started: commands run unguarded, said once
_sequence = itertools.count(1)
_groups: dict[int, int] = {}  # seq -> process group of each registered command
_seq_of: dict[int, int] = {}  # pid -> seq


def _tell(line: str) -> str:
    """Send one line to this process's guardian (started, or restarted, as needed); its token."""
    global _guardian, _unguarded
    with _lock:
        guardian = _guardian
        if guardian is not None and guardian.send(line):
            return guardian.token
        if _unguarded:
            return "none"
        if guardian is not None:
            guardian.close()  # it died (killed by someone): a new one takes over what runs
        try:
            guardian = _guardian = Guardian()
        except OSError as exc:
            _guardian, _unguarded = None, True
            sys.stderr.write(f"opsflow: commands will not be stopped if opsflow dies: {exc}\n")
            return "none"
        guardian.send("".join(f"+ {seq} {group}\n" for seq, group in _groups.items()) + line)
        return guardian.token


def _after_fork_in_child() -> None:
    """A forked copy of opsflow runs none of its parent's commands and must not keep the
    parent's guardian waiting: it closes the pipe and gets its own guardian if it needs one."""
    global _lock, _guardian
    _lock = threading.Lock()
    if _guardian is not None:
        _guardian.close()
        _guardian = None
    _groups.clear()
    _seq_of.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def spawn(argv: list[str], *, env: Mapping[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """`subprocess.Popen(argv, ...)` as the leader of a new session, stopped if opsflow dies.

    Call `release(proc)` once it has ended (`watched` does both)."""
    seq = next(_sequence)
    token = _tell(f"p {seq}\n")
    child_env = dict(os.environ if env is None else env)
    child_env[TOKEN_VAR] = f"{token}.{seq}"  # how the guardian finds it if opsflow dies right now
    try:
        proc = subprocess.Popen(argv, env=child_env, start_new_session=True, **popen)
    except BaseException:
        _tell(f"- {seq}\n")
        raise
    with _lock:
        _groups[seq] = proc.pid
        _seq_of[proc.pid] = seq
    _tell(f"+ {seq} {proc.pid}\n")
    return proc


def release(proc: subprocess.Popen) -> None:
    """The command has ended: what it left running in the background is no longer stopped
    with opsflow (as before: a step may start a service on purpose)."""
    with _lock:
        seq = _seq_of.pop(proc.pid, None)
        if seq is not None:
            _groups.pop(seq, None)
    if seq is not None:
        _tell(f"- {seq}\n")


@contextlib.contextmanager
def watched(argv: list[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """`spawn` as a context manager: the process is waited for and released when the block ends."""
    proc = spawn(argv, **popen)
    try:
        with proc:
            yield proc
    finally:
        release(proc)


# -- what a killed run left behind ----------------------------------------------------------------
def reapers() -> list[int]:
    """Guardians of this user still stopping the commands of an opsflow process that died."""
    found = []
    for pid in processes.pids():
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                continue
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        stat = processes.read_stat(pid)
        if name == REAPING_NAME and stat is not None and stat[0] != "Z":
            found.append(pid)
    return found


def wait_for_reapers(seconds: float) -> list[int]:
    """Wait up to `seconds` until no guardian is stopping a dead run's commands; those left."""
    deadline = time.monotonic() + seconds
    while (left := reapers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
