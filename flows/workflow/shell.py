"""Run one command in its own process group, stream its lines, kill the group on timeout.

Prefect's `timeout_seconds` cannot stop a thread that waits on a child process, so the
timeout lives here: the whole group (the shell and everything it started) is signalled.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from flows import children, masking

KILL_GRACE_SECONDS = 3.0
EXIT_DRAIN_SECONDS = 0.5  # after the command exits, how long its leftover children may hold the pipes
POLL_SECONDS = 0.2
MAX_CAPTURE_BYTES = 1024 * 1024
MAX_LINE_CHARS = 4000

LineSink = Callable[[str, str], None]  # (stream name, line)

# Commands run in sessions of their own, so a terminal's Ctrl-C does not reach them: whoever
# stops the run calls `terminate_all()` to take them down too.
_running: set[subprocess.Popen[bytes]] = set()
_running_lock = threading.Lock()


def terminate_all() -> int:
    """Kill the process group of every command still running; returns how many."""
    with _running_lock:
        procs = list(_running)
    _kill_groups(procs)
    return len(procs)


# A step's memory reservation is set as RLIMIT_AS by a tiny exec wrapper, not `preexec_fn`
# (Python code between fork and exec can deadlock in a threaded parent, and steps run in
# threads) nor `prlimit` after start (the command could allocate before it lands). The limit
# is inherited by everything the command starts, each process held to it on its own.
_LIMIT_AND_EXEC = (
    "import os, resource, sys\n"
    "n = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (n, n))\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as e:\n"
    "    sys.stderr.write(f'cannot start {sys.argv[2]!r}: {e.strerror}\\n')\n"
    "    sys.exit(127)\n"
)
# What runtimes print when an allocation fails (RLIMIT_AS makes malloc/mmap return ENOMEM).
_OUT_OF_MEMORY_WORDS = (
    "MemoryError",
    "Cannot allocate memory",
    "cannot allocate memory",
    "out of memory",
    "Out of memory",
    "bad_alloc",
    "memory exhausted",
    "xmalloc: cannot allocate",
)


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    timed_out: bool
    duration: float
    stdout: str
    truncated: bool = False
    memory_limit: int | None = None  # RLIMIT_AS the command ran under
    allocation_failed: str = ""  # an stderr line saying an allocation failed, if one did

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def shell_argv(
    text: str | list[str], shell: str | None, script_fd: int | None = None
) -> tuple[list[str], Path | None]:
    """The argv that runs `text`, and a temporary script file to delete afterwards, if any.

    A list is an argv already and runs without a shell.

    The text itself is never an argument: the command line of every process can be read by
    every user of the machine (`ps`, /proc/PID/cmdline), and a rendered command holds secret
    values. The shell reads it from `script_fd` (an open file only opsflow's user can read,
    `private_script`) by `. /dev/fd/N`, so `$0` and `-e` stay as with `-c`; an interpreter
    named by a `#!` line gets a private (0600) temporary file.

    `bash` runs as GitHub Actions runs it (`-eo pipefail`, no profile), so a failing line
    in a multi-line command fails the step instead of being ignored.
    """
    if isinstance(text, list):
        return list(text), None
    if text.startswith("#!"):
        interpreter = text.splitlines()[0][2:].split()
        fd, name = tempfile.mkstemp(prefix="opsflow-", suffix=".script")  # 0600
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return [*interpreter, name], Path(name)
    if script_fd is None:
        raise ValueError("a shell command is read from a private file: give script_fd")
    source = f"/dev/fd/{script_fd}"
    chosen = shell or ("bash" if shutil.which("bash") else "sh")
    base = os.path.basename(chosen)
    if base == "bash":
        return [chosen, "--noprofile", "--norc", "-eo", "pipefail", "-c", f". {source}", base], None
    if base in ("sh", "dash", "zsh", "ksh"):
        return [chosen, "-ec", f". {source}", base], None
    return [chosen, source], None  # another interpreter (python3, fish...) reads the file itself


@contextlib.contextmanager
def private_script(text: str | list[str]) -> Iterator[int | None]:
    """An open descriptor of a file holding `text`, readable by opsflow's user only and
    already unlinked (nothing is left behind, however opsflow ends); None for an argv."""
    if isinstance(text, list):
        yield None
        return
    fd, name = tempfile.mkstemp(prefix="opsflow-", suffix=".sh")  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8", "surrogateescape"))
        fd = os.open(name, os.O_RDONLY)  # what the command inherits cannot change the script
    finally:
        os.unlink(name)
    try:
        yield fd
    finally:
        os.close(fd)


def run_command(
    text: str | list[str],
    *,
    shell: str | None = None,
    timeout: float | None = None,
    on_line: LineSink | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    memory_limit: int | None = None,
    on_start: Callable[[int], None] | None = None,
    mask: Callable[[str], str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> CommandResult:
    """Run `text` and wait; stdout is returned (capped), every line goes to `on_line`.

    `on_start` is called with the command's process (and process group) id once it runs.
    `pass_fds` are descriptors the command inherits under the same numbers (`/dev/fd/N`).

    `mask` (default: the secrets of every run masking in this process, flows/masking.py) is
    applied to each whole line before a long one is cut, so the cut never splits a secret.

    `memory_limit` (bytes) is set as RLIMIT_AS: virtual memory, so a runtime that maps much
    more than it touches (Python ~30-60 MB, JVMs, Go) needs a reservation above its real use.
    """
    with private_script(text) as script_fd:
        return _run(
            text, script_fd, shell, timeout, on_line, env, cwd, memory_limit, on_start, mask, pass_fds
        )


def _run(
    text: str | list[str],
    script_fd: int | None,
    shell: str | None,
    timeout: float | None,
    on_line: LineSink | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
    memory_limit: int | None,
    on_start: Callable[[int], None] | None,
    mask: Callable[[str], str] | None,
    pass_fds: tuple[int, ...],
) -> CommandResult:
    argv, script = shell_argv(text, shell, script_fd)
    allocation_failed = ""
    if memory_limit is not None:
        argv = [sys.executable, "-S", "-c", _LIMIT_AND_EXEC, str(memory_limit), *argv]
        sink = on_line

        def on_line(stream: str, line: str) -> None:
            nonlocal allocation_failed
            if stream == "stderr" and not allocation_failed and any(w in line for w in _OUT_OF_MEMORY_WORDS):
                allocation_failed = line.strip()[:200]
            if sink:
                sink(stream, line)

    started = time.monotonic()
    try:
        # Its own process group, so a timeout can kill all of it; stopped by the guardian
        # if opsflow dies first (children.py).
        proc = children.spawn(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            pass_fds=(*pass_fds, *(() if script_fd is None else (script_fd,))),
        )
    except (FileNotFoundError, PermissionError) as exc:
        if on_line:
            on_line("stderr", f"cannot start {argv[0]!r}: {exc.strerror}")
        if script is not None:
            script.unlink(missing_ok=True)
        return CommandResult(exit_code=127, timed_out=False, duration=0.0, stdout="")
    with _running_lock:
        _running.add(proc)
    try:
        if on_start is not None:
            on_start(proc.pid)
        stdout, truncated, timed_out = _pump(proc, started, timeout, on_line, mask or masking.mask)
        exit_code = _wait(proc, started, timeout)
        timed_out = timed_out or exit_code is None
        if exit_code is None:
            _kill_group(proc)
            exit_code = proc.wait()
    except BaseException:
        _kill_group(proc)  # interrupted (Ctrl-C, task cancelled): leave nothing running
        raise
    finally:
        with _running_lock:
            _running.discard(proc)
        children.release(proc)
        if script is not None:
            script.unlink(missing_ok=True)
    return CommandResult(
        exit_code=exit_code,
        timed_out=timed_out,
        duration=time.monotonic() - started,
        stdout=stdout,
        truncated=truncated,
        memory_limit=memory_limit,
        allocation_failed=allocation_failed,
    )


def _wait(proc: subprocess.Popen[bytes], started: float, timeout: float | None) -> int | None:
    """The exit code; None when the deadline passed first. Output EOF can precede the exit.

    A pidfd makes the wait an event instead of `Popen.wait(timeout)`'s sleep-and-poll loop,
    which costs a millisecond per command (a lot for a thousand tiny files).
    """
    remaining = None if timeout is None else max(0.0, started + timeout - time.monotonic())
    if remaining is None:
        return proc.wait()
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux, or the process is already reaped
        fd = None
    if fd is not None:
        try:
            ready, _, _ = select.select([fd], [], [], remaining)
        finally:
            os.close(fd)
        return proc.wait() if ready else None
    try:
        return proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        return None


def _pump(
    proc: subprocess.Popen[bytes],
    started: float,
    timeout: float | None,
    on_line: LineSink | None,
    mask: Callable[[str], str],
) -> tuple[str, bool, bool]:
    """Read both pipes until they close, the deadline passes, or shortly after the command
    exits (a background child it left behind may hold the pipes open for ever)."""
    selector = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    lines = {stream: _LineBuffer(stream, on_line, mask) for stream in ("stdout", "stderr")}
    selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
    selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
    captured = bytearray()
    truncated = timed_out = False
    deadline = started + timeout if timeout is not None else None
    exited_at: float | None = None
    while selector.get_map():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            timed_out = True
            _kill_group(proc)
            break
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > EXIT_DRAIN_SECONDS:
            break
        limits = [POLL_SECONDS] + ([deadline - now] if deadline is not None else [])
        for key, _ in selector.select(timeout=max(0.0, min(limits))):
            chunk = os.read(key.fd, 65536)
            stream = key.data
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            if stream == "stdout":
                room = MAX_CAPTURE_BYTES - len(captured)
                captured += chunk[: max(room, 0)]
                truncated = truncated or len(chunk) > room
            lines[stream].feed(chunk)
    selector.close()
    for buffer in lines.values():
        buffer.flush()
    return captured.decode("utf-8", "replace"), truncated, timed_out


class _LineBuffer:
    """Bytes to lines; a line longer than MAX_LINE_CHARS is cut, and the rest of it dropped
    as it arrives (never accumulated), so one huge line costs neither time nor memory.

    Secrets are masked before the cut: a secret that straddles it would otherwise show its
    first characters. So that one starting before the cut is kept whole, a long line keeps
    as many more characters as the longest secret has before the rest is dropped."""

    def __init__(self, stream: str, sink: LineSink | None, mask: Callable[[str], str] | None = None) -> None:
        self.stream, self.sink, self.mask = stream, sink, mask or masking.mask
        self.pending = bytearray()
        self.overflow = False

    def feed(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self._take(chunk[start:end])
            self.flush()
            start = end + 1
        self._take(chunk[start:])

    def _take(self, part: bytes) -> None:
        if self.overflow:
            return
        # bytes: up to 4 per character
        room = (MAX_LINE_CHARS + masking.longest_secret(self.mask)) * 4 - len(self.pending)
        self.pending += part[:room]
        self.overflow = len(part) > room

    def flush(self) -> None:
        if self.pending or self.overflow:
            line = self.mask(self.pending.decode("utf-8", "replace").rstrip("\r"))
            if len(line) > MAX_LINE_CHARS or self.overflow:
                line = line[:MAX_LINE_CHARS] + " …[cut]"
            if self.sink:
                self.sink(self.stream, line)
        self.pending = bytearray()
        self.overflow = False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    _kill_groups([proc])


def _kill_groups(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every group at once, one shared grace period, then SIGKILL what is left
    (the shell may be gone while its children linger in the group)."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
