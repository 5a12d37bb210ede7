"""Plan -> Prefect flow run: one task run per step. The only Prefect-aware module of the engine.

`run_workflow` is a plain module-level flow, so `prefect deploy` can deploy any workflow
file by passing its path as a parameter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run as current_flow_run
from prefect.runtime import task_run as current_task_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.errors import DependencyError, OpsflowError, StepFailure
from flows.workflow import plan as planning
from flows.workflow.check import analyse
from flows.workflow.dispatch import Dispatcher, Outcome
from flows.workflow.graph import Graph, Hook
from flows.workflow.load import LoadedWorkflow, Location, load_workflow
from flows.workflow.params import bind
from flows.workflow.report import RunSummary, StepOutcome, notify
from flows.workflow.shell import CommandResult, run_command, terminate_all
from flows.workflow.spec import Step
from flows.workflow.units import format_duration, parse_duration

THREADS = 64  # the dispatcher enforces the real limits; this only has to be large enough


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
    ) -> None:
        self.step, self.exit_code, self.timed_out = step, exit_code, timed_out
        self.attempt, self.timeout, self.duration = attempt, timeout, duration
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.timed_out:
            return (
                f"`{self.step}` timed out after {format_duration(self.timeout or 0)} (process group killed)"
            )
        if self.exit_code < 0:
            return f"`{self.step}` was killed by {signal.Signals(-self.exit_code).name}"
        return f"`{self.step}` exited with code {self.exit_code}"

    def __repr__(self) -> str:  # Prefect logs the repr when it schedules a retry
        return str(self)

    def __reduce__(self) -> tuple:
        return (
            CommandFailed,
            (self.step, self.exit_code, self.timed_out, self.attempt, self.timeout, self.duration),
        )


@task(name="step", cache_policy=NO_CACHE, persist_result=False)
def run_step(
    step_id: str,
    command: str,
    shell: str | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    before_retry: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run one command; its lines go to the run log, a failure raises so Prefect retries."""
    logger = get_run_logger()
    attempt = current_task_run.run_count or 1
    if attempt > 1 and before_retry is not None:
        before_retry()
    result: CommandResult = run_command(
        command,
        shell=shell,
        timeout=timeout,
        env=env,
        on_line=lambda stream, line: logger.info(line if stream == "stdout" else f"stderr| {line}"),
    )
    if not result.ok:
        raise CommandFailed(step_id, result.exit_code, result.timed_out, attempt, timeout, result.duration)
    return {"exit_code": 0, "stdout": result.stdout, "attempts": attempt, "duration": result.duration}


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
def _stop_commands_on_signals() -> Iterator[None]:
    """On SIGINT/SIGTERM kill the running commands first, then let the previous handler act.

    Commands run in sessions of their own, so a terminal's Ctrl-C or a worker's cancellation
    would not reach them, and the flow would wait for them to finish.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
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


def _flow_run_name() -> str:
    params = current_flow_run.parameters or {}
    path = str(params.get("path", "workflow"))
    try:
        return load_workflow(path).spec.name
    except OpsflowError:
        return os.path.splitext(os.path.basename(path))[0]


class WorkflowRun:
    """The state of one flow run: context, dispatcher, summary. Lives only inside the flow."""

    def __init__(
        self,
        loaded: LoadedWorkflow,
        graph: Graph,
        context: dict[str, Any],
        summary: RunSummary,
        deadline: float | None,
    ) -> None:
        self.loaded, self.graph, self.context, self.summary = loaded, graph, context, summary
        self.deadline = deadline
        self.logger = get_run_logger()
        self.fallback_retry = planning.default_retry(loaded.spec)
        self.group_skip: dict[str, str | None] = {}
        self.completion_order: list[str] = []
        self.env = {
            **os.environ,
            "OPSFLOW_WORKFLOW": loaded.spec.name,
            "OPSFLOW_WORKFLOW_ID": str(context["workflow_id"]),
            "OPSFLOW_ENVIRONMENT": str(context["environment"]),
        }

    # -- one step ---------------------------------------------------------------------------
    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def prepare(
        self, step_id: str, step: Step, loc: Location, retry_of: str | None
    ) -> tuple[Any, dict[str, Any]]:
        """The step's task (named, with its retry delays) and its arguments, rendered now."""
        command = planning.render_step(self.loaded, step, loc, self.context)
        timeout = self.graph.inherited(step_id, "timeout") if step_id in self.graph.nodes else step.timeout
        remaining = self.remaining()
        if remaining is not None:
            timeout = remaining if timeout is None else min(float(timeout), remaining)  # type: ignore[arg-type]
        retry = self.graph.retry_of(retry_of, self.fallback_retry) if retry_of else step.retry
        delays = planning.retry_delays(retry)
        hooks = self.graph.nodes[step_id].hooks.get("on_retry", []) if step_id in self.graph.nodes else []
        before_retry = (lambda: self.run_hooks(hooks, f"{step_id}.on_retry")) if hooks else None
        options = run_step.with_options(
            name=step_id,
            task_run_name=step_id,
            retries=len(delays),
            retry_delay_seconds=delays or 0,
        )
        notify("started", step_id)
        kwargs = {
            "step_id": step_id,
            "command": command,
            "shell": step.shell,
            "timeout": timeout,
            "env": {**self.env, "OPSFLOW_STEP": step_id},
            "before_retry": before_retry,
        }
        return options, kwargs

    def settle(self, step_id: str, state: State, section: str) -> StepOutcome:
        value = state.result(raise_on_failure=False)
        if state.is_completed() and isinstance(value, dict):
            return self.summary.add(
                StepOutcome(
                    step_id,
                    "Completed",
                    section,
                    value["attempts"],
                    value["duration"],
                    value["exit_code"],
                    "",
                )
            )
        if isinstance(value, CommandFailed):
            return self.summary.add(
                StepOutcome(
                    step_id,
                    "TimedOut" if value.timed_out else "Failed",
                    section,
                    value.attempt,
                    value.duration,
                    value.exit_code,
                    str(value),
                )
            )
        return self.summary.add(StepOutcome(step_id, "Failed", section, 1, 0.0, None, str(value)[:300]))

    def run_one(self, hook: Hook, section: str) -> StepOutcome:
        """Run a hook-like step now and wait for it."""
        try:
            reason = planning.skip_reason(self.loaded, hook.step, hook.loc, self.context)
        except OpsflowError as exc:
            return self.summary.add(StepOutcome(hook.id, "Failed", section, 0, 0.0, None, str(exc)))
        if reason:
            mark_skipped.with_options(task_run_name=hook.id)(hook.id, reason)
            return self.summary.add(StepOutcome(hook.id, "Skipped", section, reason=reason))
        try:
            options, kwargs = self.prepare(hook.id, hook.step, hook.loc, retry_of=None)
        except OpsflowError as exc:
            return self.summary.add(StepOutcome(hook.id, "Failed", section, 0, 0.0, None, str(exc)))
        # Called, not submitted: hooks run in order, and may run inside another step's retry.
        state = options(**kwargs, return_state=True)
        outcome = self.settle(hook.id, state, section)
        self._capture(hook.step, state, outcome)
        return outcome

    def run_hooks(self, hooks: list[Hook], section: str) -> list[StepOutcome]:
        if hooks:
            self.logger.info(f"running {section} ({len(hooks)} step{'s' if len(hooks) != 1 else ''})")
        return [self.run_one(hook, section) for hook in hooks]

    def _capture(self, step: Step, state: State, outcome: StepOutcome) -> None:
        if step.capture_output is not None and outcome.state == "Completed":
            name = step.capture_output or (step.name or "")
            self.context["outputs"][name] = state.result()["stdout"].strip()

    # -- the main steps ---------------------------------------------------------------------
    def decide(self, leaf: str) -> tuple[str, str] | None:
        """(node to skip, reason) when the leaf or one of its groups has a false condition."""
        for node_id in [*reversed(self.graph.ancestors(leaf)), leaf]:
            if node_id not in self.group_skip:
                node = self.graph.nodes[node_id]
                self.group_skip[node_id] = planning.skip_reason(
                    self.loaded, node.step, node.loc, self.context
                )
            reason = self.group_skip[node_id]
            if reason:
                return node_id, reason
        return None

    def run_steps(self, dispatcher: Dispatcher) -> None:
        running: dict[PrefectFuture, str] = {}
        while not dispatcher.done:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                dispatcher.stop("not started: the workflow's --timeout ran out")
            for leaf in dispatcher.ready():
                node = self.graph.nodes[leaf]
                try:
                    decision = self.decide(leaf)
                    if decision is not None:
                        node_id, reason = decision
                        mark_skipped.with_options(task_run_name=node_id)(node_id, reason)
                        for skipped in dispatcher.skip(node_id, reason):
                            self.summary.add(StepOutcome(skipped, "Skipped", reason=reason))
                        continue
                    options, kwargs = self.prepare(leaf, node.step, node.loc, retry_of=leaf)
                    running[options.submit(**kwargs)] = leaf
                except OpsflowError as exc:  # a template error at run time fails the step, not the engine
                    self.logger.error(str(exc))
                    dispatcher.finish(leaf, Outcome.FAILED, str(exc))
                    self.summary.add(StepOutcome(leaf, "Failed", reason=str(exc)))
            if not running:
                continue
            future = next(as_completed(list(running), timeout=self.remaining_wait()), None)
            if future is None:
                continue
            leaf = running.pop(future)
            future.wait()  # as_completed can yield before the final state is recorded on the future
            outcome = self.settle(leaf, future.state, "steps")
            if outcome.failed:
                self.logger.error(f"step `{leaf}` {outcome.state.lower()}: {outcome.reason}")
                dispatcher.finish(leaf, Outcome.FAILED, outcome.reason)
                self.run_hooks(self.graph.nodes[leaf].hooks.get("on_failure", []), f"{leaf}.on_failure")
            else:
                dispatcher.finish(leaf, Outcome.COMPLETED)
                self.completion_order.append(leaf)
                self._capture(self.graph.nodes[leaf].step, future.state, outcome)
                self.run_hooks(self.graph.nodes[leaf].hooks.get("on_success", []), f"{leaf}.on_success")
        for leaf, settled in dispatcher.settled.items():
            if settled.outcome is Outcome.NOT_RUN:
                self.summary.add(StepOutcome(leaf, "NotRun", reason=settled.reason))

    def remaining_wait(self) -> float | None:
        # Wake up at the workflow deadline so pending steps settle even while others run.
        remaining = self.remaining()
        return None if remaining is None else remaining + 1.0

    def compensate(self, failed: list[str]) -> None:
        """Undo completed steps of atomic groups that had a failure, newest completion first."""
        groups = {
            group
            for leaf in failed
            for group in self.graph.ancestors(leaf)
            if self.graph.nodes[group].step.atomic or self.graph.nodes[group].step.rollback_on_failure
        }
        for group in sorted(groups, key=lambda g: -self.graph.nodes[g].order):
            members = set(self.graph.leaves_under(group))
            for leaf in reversed([s for s in self.completion_order if s in members]):
                hooks = self.graph.nodes[leaf].hooks.get("compensate", [])
                if not hooks:
                    self.logger.warning(
                        f"`{leaf}` completed in atomic group `{group}` but declares no `compensate`"
                    )
                self.run_hooks(hooks, f"{leaf}.compensate")


@flow(
    name="run-workflow",
    flow_run_name=_flow_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=THREADS),
    validate_parameters=True,
    persist_result=False,
)
def run_workflow(
    path: str,
    parameters: dict[str, Any] | None = None,
    environment: str | None = None,
    parallel: int | None = None,
    continue_on_error: bool = False,
    timeout: str | None = None,
    default_environment: str = "development",
) -> State:
    """Run the YAML workflow at `path`: one task run per step, summary as a table artifact."""
    try:
        with _stop_commands_on_signals():
            return _run(
                path, parameters, environment, parallel, continue_on_error, timeout, default_environment
            )
    except OpsflowError as err:
        # Bad input or an unmet prerequisite: one line in the run's log, not a traceback.
        get_run_logger().error(str(err))
        return Failed(message=str(err), data=err)


def _run(
    path: str,
    parameters: dict[str, Any] | None,
    environment: str | None,
    parallel: int | None,
    continue_on_error: bool,
    timeout: str | None,
    default_environment: str,
) -> State:
    logger = get_run_logger()
    loaded = load_workflow(path)
    analysis = analyse(loaded)
    graph = analysis.graph
    workflow_id = str(current_flow_run.id or "local")
    bound = bind(
        loaded,
        {k: v if isinstance(v, str) else _as_text(v) for k, v in (parameters or {}).items()},
        environment=environment,
        default_environment=default_environment,
        workflow_id=workflow_id,
    )
    for warning in [*analysis.warnings, *bound.warnings]:
        logger.warning(warning)
    unenforced = planning.unenforced_workflow_fields(loaded.spec) + [
        f"{n.id}: {key}" for n in graph.nodes.values() for key in planning.unenforced_step_fields(n.step)
    ]
    if unenforced:
        logger.warning("accepted, not yet enforced: " + "; ".join(unenforced))
    summary = RunSummary(loaded.spec.name, str(bound.context["environment"]), workflow_id)
    deadline = time.monotonic() + parse_duration(timeout) if timeout else None
    run = WorkflowRun(loaded, graph, bound.context, summary, deadline)

    unmet = _unmet_prerequisite(run)
    if unmet:
        run.logger.error(unmet)
        return _finish(summary, failed_main=[], unmet=unmet)
    strategy = "continue_on_error" if continue_on_error else loaded.spec.error_handling.strategy
    dispatcher = Dispatcher(
        graph,
        limit=planning.effective_parallel(loaded.spec, parallel),
        fail_fast=strategy != "continue_on_error",
    )
    run.run_steps(dispatcher)
    failed = [s for s in summary.steps if s.failed]
    if failed:
        run.compensate([s.step for s in failed])
        if loaded.spec.rollback and loaded.spec.rollback.enabled and loaded.spec.rollback.automatic:
            run.run_hooks(graph.sections["rollback"], "rollback")
        run.run_hooks(graph.sections["on_failure"], "on_failure")
        run.run_hooks(graph.sections["post_failure"], "post_execution.failure")
    else:
        run.run_hooks(graph.sections["on_success"], "on_success")
        run.run_hooks(graph.sections["post_success"], "post_execution.success")
    # The table reads in plan order: prerequisites, steps as written, then hooks as they ran.
    order = {node_id: i for i, node_id in enumerate(graph.nodes)}
    sections = {"prerequisites": 0, "steps": 1}
    summary.steps.sort(
        key=lambda s: (sections.get(s.section, 2), order.get(s.step, 0) if s.section == "steps" else 0)
    )
    return _finish(summary, failed_main=[s.step for s in failed])


def _unmet_prerequisite(run: WorkflowRun) -> str | None:
    """Run the prerequisites in order; the message of the first that fails, if any."""
    spec = run.loaded.spec
    for index, pre in enumerate(spec.prerequisites):
        step = Step(name=pre.name, command=pre.command, timeout=pre.timeout)
        outcome = run.run_one(Hook(pre.name, step, ("prerequisites", index)), "prerequisites")
        if outcome.failed:
            where = run.loaded.where(("prerequisites", index))
            return f"{where}: prerequisite `{pre.name}` failed: {outcome.reason}"
    return None


def _finish(summary: RunSummary, failed_main: list[str], unmet: str | None = None) -> State:
    summary.finished = time.time()
    hook_failures = [s.step for s in summary.steps if s.failed and s.step not in failed_main]
    if unmet:
        summary.state, summary.exit_code, summary.message = "Failed", DependencyError.exit_code, unmet
    elif failed_main or hook_failures:
        summary.state, summary.exit_code = "Failed", StepFailure.exit_code
        parts = []
        if failed_main:
            parts.append(f"failed: {', '.join(failed_main)}")
        if hook_failures:
            parts.append(f"hooks failed: {', '.join(hook_failures)}")
        summary.message = "; ".join(parts)
    else:
        summary.state, summary.exit_code = "Completed", 0
    create_table_artifact(
        table=summary.rows() or [{"step": "-", "state": "no steps"}],
        key=_artifact_key(summary.workflow),
        description=summary.markdown(),
    )
    data = summary.to_dict()
    if summary.exit_code:
        return Failed(message=summary.message, data=data)
    return Completed(message=f"{len(summary.steps)} steps", data=data)


def _artifact_key(name: str) -> str:
    return "workflow-" + (re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "run")


def _as_text(value: Any) -> str:
    import json

    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def run_and_summarise(console: Any, *, json_output: bool, plan: Any = None, **flow_kwargs: Any) -> int:
    """Run the flow in this process, print its summary, return the exit code."""
    from flows.workflow.show import summary_table

    try:
        with _terminal_view(plan, console):
            state = run_workflow(**flow_kwargs, return_state=True)
    except BaseException:
        # Ctrl-C or a termination signal: the commands run in their own sessions and would
        # outlive us (and keep this process waiting for its threads), so stop them first.
        stopped = terminate_all()
        if stopped:
            console.warning(f"interrupted: stopped {stopped} running command(s)")
        raise
    value = state.result(raise_on_failure=False)
    if isinstance(value, OpsflowError):
        console.error(str(value))
        return value.exit_code
    if not isinstance(value, dict):
        console.error(f"the flow run ended {state.name}: {state.message or value}")
        return StepFailure.exit_code
    summary = RunSummary.from_dict(value)
    if json_output:
        console.json(summary.to_dict())
    else:
        console.out(summary_table(summary))
    return summary.exit_code


@contextlib.contextmanager
def _terminal_view(plan: Any, console: Any) -> Iterator[None]:
    """On a terminal, the live view replaces Prefect's console handler for the run's duration."""
    if plan is None or not sys.stderr.isatty() or console.quiet:
        yield
        return
    from flows.workflow.live import LiveView

    root = logging.getLogger()
    prefect_consoles = [h for h in root.handlers if type(h).__name__ == "PrefectConsoleHandler"]
    view = LiveView(plan, level=logging.DEBUG if console.verbose else logging.INFO)
    for handler in prefect_consoles:
        root.removeHandler(handler)
    root.addHandler(view.handler)
    try:
        with view:
            yield
    finally:
        root.removeHandler(view.handler)
        for handler in prefect_consoles:
            root.addHandler(handler)
