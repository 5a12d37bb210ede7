"""The Prefect tasks a workflow run is made of: one command per task run, and a skipped marker.

Prefect-aware, like `execute.py` and `run.py`; everything before them is pure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run as current_task_run
from prefect.states import Completed, State

from flows.secrets import scrub_text
from flows.workflow import logship
from flows.workflow.pools import Claim, PoolWaitEnded, hold
from flows.workflow.pools import stopping as pools_stopping
from flows.workflow.shell import CommandResult, run_command, terminate_all
from flows.workflow.steplog import StepLog
from flows.workflow.units import format_duration, format_memory


class CommandFailed(Exception):
    """A step's command exited non-zero or timed out (raised inside the task so Prefect retries)."""

    def __init__(
        self,
        step: str,
        exit_code: int,
        timed_out: bool,
        attempt: int,
        timeout: float | None,
        duration: float = 0.0,
        reason: str = "",
        memory_note: str = "",
    ) -> None:
        self.step, self.exit_code, self.timed_out = step, exit_code, timed_out
        self.attempt, self.timeout, self.duration, self.reason = attempt, timeout, duration, reason
        self.memory_note = memory_note  # why the failure is (likely) its memory reservation
        super().__init__(str(self))

    final = False  # set when retrying cannot help (the run's deadline has passed)

    def __str__(self) -> str:
        if self.reason:
            return f"`{self.step}` did not run: {self.reason}"
        if self.timed_out:
            return (
                f"`{self.step}` timed out after {format_duration(self.timeout or 0)} (process group killed)"
            )
        if self.exit_code < 0:
            how = f"`{self.step}` was killed by {signal.Signals(-self.exit_code).name}"
        else:
            how = f"`{self.step}` exited with code {self.exit_code}"
        return f"{how}: {self.memory_note}" if self.memory_note else how

    def __repr__(self) -> str:  # Prefect logs the repr when it schedules a retry
        return str(self)

    def __reduce__(self) -> tuple:
        return (
            CommandFailed,
            (
                self.step,
                self.exit_code,
                self.timed_out,
                self.attempt,
                self.timeout,
                self.duration,
                self.reason,
                self.memory_note,
            ),
        )


_MEMORY_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGKILL}


def memory_note(result: CommandResult) -> str:
    """Why a failed command under a memory limit (likely) failed for lack of memory, or "".

    RLIMIT_AS makes allocations fail; a runtime reports that on stderr (MemoryError,
    "Cannot allocate memory"), or the process dies of a signal. Only the first is certain.
    """
    if result.memory_limit is None or result.ok or result.timed_out:
        return ""
    limit = f"{format_memory(result.memory_limit)} of virtual memory, RLIMIT_AS"
    if result.allocation_failed:
        return f"it ran out of its memory reservation ({limit}): {result.allocation_failed}"
    code = result.exit_code
    number = -code if code < 0 else code - 128 if 128 < code < 160 else 0
    if number and signal.Signals(number) in _MEMORY_SIGNALS:
        return (
            f"died of {signal.Signals(number).name} under its memory reservation ({limit}); "
            "running out of it is the likely cause"
        )
    return ""


@task(name="step", cache_policy=NO_CACHE, persist_result=False)
def run_step(
    step_id: str,
    command: str,
    shell: str | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    before_retry: Callable[[], None] | None = None,
    deadline: float | None = None,
    memory: int | None = None,
    shared: Claim | None = None,
    mask: Callable[[str], str] | None = None,
    secret_stdout: str | None = None,
    watch: Callable[[int], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Run one command; its lines go to the run log, a failure raises so Prefect retries.

    `deadline` (epoch seconds) is the whole run's `--timeout`: every attempt, retries
    included, gets at most what is left of it. `memory` (bytes) is the step's reservation,
    held as its processes' RLIMIT_AS. `shared`: the reservation's slots in the pool the run
    shares with other runs (pools.py), held by each attempt while its command runs. `mask`
    takes the run's secrets out of each output line before it is logged (flows/masking.py);
    `secret_stdout`: the name of the secret output the command prints, so stdout is not logged.
    `watch` records the command's process group while it runs (so nothing overlaps it if the run
    is killed) and returns what records its end.
    """
    logger = get_run_logger()
    attempt = current_task_run.run_count or 1
    if attempt > 1 and before_retry is not None:
        before_retry()
    with contextlib.ExitStack() as room:
        if shared is not None:
            try:
                room.enter_context(hold(shared, step_id, logger, deadline))
            except PoolWaitEnded as ended:
                raise CommandFailed(step_id, -1, ended.timed_out, attempt, 0.0, reason=str(ended)) from None
        return _run_attempt(
            step_id,
            command,
            shell,
            timeout,
            env,
            deadline,
            memory,
            attempt,
            logger,
            mask or scrub_text,
            secret_stdout,
            watch,
        )


def _run_attempt(
    step_id: str,
    command: str,
    shell: str | None,
    timeout: float | None,
    env: dict[str, str] | None,
    deadline: float | None,
    memory: int | None,
    attempt: int,
    logger: Any,
    mask: Callable[[str], str],
    secret_stdout: str | None = None,
    watch: Callable[[int], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    capped = False
    if deadline is not None:
        left = deadline - time.time()
        if left <= 0:
            raise CommandFailed(step_id, -1, True, attempt, 0.0, reason="the workflow's --timeout ran out")
        capped = timeout is None or left < timeout
        timeout = left if timeout is None else min(timeout, left)
    ends: list[Callable[[], None]] = []
    try:
        with StepLog(logger, step_id, mask, secret_stdout=secret_stdout) as log:
            sink = logship.tee(log.line, step_id, attempt)  # also to the run's JSON lines, if aggregated
            if secret_stdout is not None:
                sink = log.without_stdout(sink)
            result: CommandResult = run_command(
                command,
                shell=shell,
                timeout=timeout,
                env=env,
                on_line=sink,
                memory_limit=memory,
                on_start=(lambda pid: ends.append(watch(pid))) if watch is not None else None,
                mask=mask,
            )
    finally:
        for end in ends:
            end()
    if not result.ok:
        failure = CommandFailed(
            step_id,
            result.exit_code,
            result.timed_out,
            attempt,
            timeout,
            result.duration,
            memory_note=mask(memory_note(result)),  # it may quote a line of the output
        )
        failure.final = result.timed_out and capped  # the run's deadline, not the step's: no retry
        raise failure
    return {"exit_code": 0, "stdout": result.stdout, "attempts": attempt, "duration": result.duration}


def retry_unless_final(task: Any, task_run: Any, state: State) -> bool:
    """Prefect's retry condition: no retry once the run's --timeout has run out."""
    failure = state.result(raise_on_failure=False)
    return not (isinstance(failure, CommandFailed) and (failure.final or failure.reason))


@task(name="hooks", cache_policy=NO_CACHE, persist_result=False)
def run_hook_chain(section: str, chain: Callable[[], Any]) -> Any:
    """A step's hooks, in order, off the dispatcher's thread (each hook is a task run of its own)."""
    return chain()


@task(name="skipped", cache_policy=NO_CACHE, persist_result=False)
def mark_skipped(step_id: str, reason: str) -> State:
    """A visible task run for a step that did not run; Prefect has no Skipped state of its own."""
    return Completed(name="Skipped", message=reason)


class _QuietStepFailures(logging.Filter):
    """A failing command is an expected outcome: its one-line reason is the message, with no
    Python traceback (which would only show opsflow's own frames)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], CommandFailed):
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("prefect.task_runs").addFilter(_QuietStepFailures())


@contextlib.contextmanager
def stop_commands_on_signals() -> Iterator[None]:
    """On SIGINT/SIGTERM kill the running commands first, then let the previous handler act.

    Commands run in sessions of their own, so a terminal's Ctrl-C or a worker's cancellation
    would not reach them, and the flow would wait for them to finish.
    """
    pools_stopping.clear()  # an earlier run's interrupt must not end this run's waits
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        pools_stopping.set()  # steps waiting for a shared pool give up too
        terminate_all()
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
