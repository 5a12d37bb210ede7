"""The run loop of one workflow flow run: start ready steps, settle them, run their hooks.

The dispatcher (pure) says which steps may start; this module submits them as Prefect task
runs, keeps the template context (captured outputs) and the summary, and never blocks on a
hook: a step's hooks run as a chained task, and the step counts as finished for its
dependents only when its hooks are done.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.states import State

from flows.errors import OpsflowError
from flows.masking import Masker
from flows.workflow import breaker
from flows.workflow import plan as planning
from flows.workflow.dispatch import Dispatcher, Outcome, reservation_of
from flows.workflow.graph import Graph, Hook, Node
from flows.workflow.load import LoadedWorkflow, Location
from flows.workflow.notifications import RunNotifier
from flows.workflow.pools import Claim, SharedPool, declare
from flows.workflow.report import RunSummary, StepOutcome, notify
from flows.workflow.spec import Step
from flows.workflow.state import Recorder
from flows.workflow.tasks import CommandFailed, mark_skipped, retry_unless_final, run_hook_chain, run_step

TIMEOUT_REASON = "not started: the workflow's --timeout ran out"


@dataclass
class Pending:
    """What a running future stands for."""

    leaf: str
    phase: str  # "step" or "hooks"
    outcome: StepOutcome | None = None


class WorkflowRun:
    """Context, dispatcher and summary of one flow run; lives only inside the flow."""

    def __init__(
        self,
        loaded: LoadedWorkflow,
        graph: Graph,
        context: dict[str, Any],
        summary: RunSummary,
        deadline: float | None,
        env: dict[str, str],
        notifier: RunNotifier,
    ) -> None:
        self.loaded, self.graph, self.context, self.summary = loaded, graph, context, summary
        self.deadline = deadline  # epoch seconds, from --timeout
        self.env = env
        self.logger = get_run_logger()
        self.fallback_retry = planning.default_retry(loaded.spec)
        self.lock = threading.Lock()  # hooks render from other threads while outputs are captured
        self.conditions: dict[str, str | None] = {}
        self.completion_order: list[str] = []
        self.groups_done: set[str] = set()
        self.timed_out = False
        self.awaiting_approval: list[str] = []  # started by the dispatcher, waiting for a decision
        self.notifier = notifier  # the run's: requires_approval goes where started/failed go
        self.recorder = Recorder(summary.workflow_id, self.logger, enabled=False)  # run.py sets the real one
        self.mask: Masker = Masker()  # run.py's, with the run's secrets (flows/masking.py)
        self.pool = SharedPool.of(loaded.spec.resource_limits)  # limits shared with other runs

    # -- one step --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {**self.context, "outputs": copy.copy(self.context["outputs"])}

    def prepare(
        self, step_id: str, step: Step, loc: Location, node: Node | None
    ) -> tuple[Any, dict[str, Any]]:
        """The step's task (named, with its retry delays) and arguments, rendered now.

        `node` is the graph node for main steps; hooks and prerequisites have none and use only
        their own settings, whatever their names.
        """
        command = planning.render_step(self.loaded, step, loc, self.snapshot())
        if node is not None:
            timeout = self.graph.inherited(node.id, "timeout")
            retry = self.graph.retry_of(node.id, self.fallback_retry)
            on_retry = [
                h
                for n in [node.id, *self.graph.ancestors(node.id)]
                for h in self.graph.nodes[n].hooks.get("on_retry", [])
            ]
        else:
            timeout, retry, on_retry = step.timeout, step.retry, []
        delays = planning.retry_delays(retry)
        options = run_step.with_options(
            name=step_id,
            task_run_name=step_id,
            retries=len(delays),
            retry_delay_seconds=delays or 0,
            retry_condition_fn=retry_unless_final,
        )
        notify("started", step_id)
        shared = None
        if node is not None and self.pool is not None:
            slots = self.pool.slots(reservation_of(self.graph, node.id))
            shared = Claim(self.pool, slots) if slots else None
        return options, {
            "step_id": step_id,
            "command": command,
            "shell": step.shell,
            "timeout": timeout,
            "env": {**self.env, "OPSFLOW_STEP": step_id},
            "mask": self.mask,
            "secret_stdout": step.capture_output if step.captures_secret else None,
            "before_retry": (lambda: self.run_hooks(on_retry, f"{step_id}.on_retry")) if on_retry else None,
            # hooks (rollback, on_failure...) get their own time even after the run's deadline
            "deadline": self.deadline if node is not None else None,
            # a hook is not scheduled by reservation, but its own `resources.memory` still binds it
            "memory": reservation_of(self.graph, node.id).memory
            if node is not None
            else (step.resources.memory if step.resources else None),
            "shared": shared,
            "watch": lambda pid: self.recorder.command_started(step_id, pid),
        }

    def settle(self, step_id: str, state: State, section: str) -> StepOutcome:
        value = state.result(raise_on_failure=False)
        if state.is_completed() and isinstance(value, dict):
            outcome = StepOutcome(step_id, "Completed", section, value["attempts"], value["duration"], 0)
        elif isinstance(value, CommandFailed):
            kind = "TimedOut" if value.timed_out else "Failed"
            outcome = StepOutcome(
                step_id, kind, section, value.attempt, value.duration, value.exit_code, str(value)
            )
        else:
            outcome = StepOutcome(step_id, "Failed", section, 1, 0.0, None, self.mask(str(value))[:300])
        self.recorder.settled(outcome, self, value)
        return self.summary.add(outcome)

    def capture(self, step: Step, state: State, outcome: StepOutcome) -> None:
        if step.capture_output is not None and outcome.state == "Completed":
            value = state.result()["stdout"].strip()
            if step.captures_secret:
                self.mask.add([value])  # masked in every later line, like a secret parameter
            with self.lock:
                self.context["outputs"][step.capture_output] = value

    def run_one(self, hook: Hook, section: str) -> StepOutcome:
        """Run a hook-like step now, in this thread, and wait for it."""
        try:
            reason = planning.skip_reason(self.loaded, hook.step, hook.loc, self.snapshot())
            if reason:
                mark_skipped.with_options(task_run_name=hook.id)(hook.id, reason)
                return self.summary.add(StepOutcome(hook.id, "Skipped", section, reason=reason))
            options, kwargs = self.prepare(hook.id, hook.step, hook.loc, node=None)
        except OpsflowError as exc:
            return self.summary.add(StepOutcome(hook.id, "Failed", section, 0, 0.0, None, str(exc)))
        state = options(**kwargs, return_state=True)
        outcome = self.settle(hook.id, state, section)
        self.capture(hook.step, state, outcome)
        return outcome

    def run_hooks(self, hooks: list[Hook], section: str) -> list[StepOutcome]:
        if hooks:
            self.logger.info(f"running {section} ({len(hooks)} step{'s' if len(hooks) != 1 else ''})")
        return [self.run_one(hook, section) for hook in hooks]

    # -- the main steps --------------------------------------------------------------------
    def decide(self, leaf: str) -> tuple[str, str] | None:
        """(node to skip, reason) when the leaf or one of its groups has a false condition."""
        for node_id in [*reversed(self.graph.ancestors(leaf)), leaf]:
            if node_id not in self.conditions:
                node = self.graph.nodes[node_id]
                self.conditions[node_id] = planning.skip_reason(
                    self.loaded, node.step, node.loc, self.snapshot()
                )
            if self.conditions[node_id]:
                return node_id, self.conditions[node_id]  # type: ignore[return-value]
        return None

    def start_ready(self, dispatcher: Dispatcher, running: dict[PrefectFuture, Pending]) -> None:
        """Start every step that may start; skipping frees slots, so ask again until none."""
        while batch := self.ready(dispatcher):
            for leaf in batch:
                if leaf in dispatcher.settled:  # skipped with its group earlier in this batch
                    continue
                node = self.graph.nodes[leaf]
                try:
                    decision = self.decide(leaf)
                    if decision is not None:
                        node_id, reason = decision
                        mark_skipped.with_options(task_run_name=node_id)(node_id, reason)
                        for skipped in dispatcher.skip(node_id, reason):
                            self.summary.add(StepOutcome(skipped, "Skipped", reason=reason))
                        continue
                    if node.step.manual_approval:
                        self.awaiting_approval.append(leaf)
                        continue
                    self.launch(dispatcher, running, leaf)
                except OpsflowError as exc:  # a template error at run time fails the step, not the run
                    self.logger.error(str(exc))
                    dispatcher.finish(leaf, Outcome.FAILED, str(exc))
                    self.summary.add(StepOutcome(leaf, "Failed", reason=str(exc)))

    def ready(self, dispatcher: Dispatcher) -> list[str]:
        batch = dispatcher.ready()
        for line in dispatcher.take_waits():
            self.logger.info(line)
        return batch

    def run_steps(self, dispatcher: Dispatcher) -> None:
        running: dict[PrefectFuture, Pending] = {}
        if self.pool is not None:
            declare(self.pool, self.logger)
        while not dispatcher.done:
            if self.deadline is not None and time.time() >= self.deadline and not dispatcher.stopped:
                self.timed_out = True
                dispatcher.stop(TIMEOUT_REASON)
            self.start_ready(dispatcher, running)
            if not running and self.awaiting_approval:
                self.ask_approval(dispatcher, running)
            if not running:
                continue
            try:
                future = next(as_completed(list(running), timeout=self.wait_limit()))
            except TimeoutError:
                continue  # the deadline passed: loop to stop starting steps
            pending = running.pop(future)
            future.wait()  # as_completed can yield before the final state is on the future
            if pending.phase == "step":
                self.step_done(dispatcher, running, pending.leaf, future.state)
            elif pending.phase == "hooks":
                self.after_own_hooks(dispatcher, running, pending.leaf, pending.outcome)  # type: ignore[arg-type]
            else:
                self.finish(dispatcher, pending.leaf, pending.outcome)  # type: ignore[arg-type]
        for leaf, settled in dispatcher.settled.items():
            if settled.outcome is Outcome.NOT_RUN:
                self.summary.add(StepOutcome(leaf, "NotRun", reason=settled.reason))
        self.run_unfinished_group_hooks(dispatcher)

    def ask_approval(self, dispatcher: Dispatcher, running: dict[PrefectFuture, Pending]) -> None:
        """Pause the run for each step marked `manual_approval`, once no other step is running
        (a paused flow run cannot start tasks); approved steps start, rejected ones fail."""
        from flows.approval import approval_timeout, request_approval

        timeout = approval_timeout()
        while self.awaiting_approval:
            leaf = self.awaiting_approval.pop(0)
            what = f"run step `{leaf}` of {self.summary.workflow} ({self.summary.environment})"
            decision = request_approval(
                what,
                timeout=timeout,
                key=f"step-{leaf}",
                announce=lambda line: self.notifier.emit("requires_approval", detail=line),
            )
            if not decision.approved:
                reason = f"approval {decision.describe()}"
                dispatcher.finish(leaf, Outcome.FAILED, reason)
                self.summary.add(StepOutcome(leaf, "Failed", reason=reason))
                continue
            try:
                self.launch(dispatcher, running, leaf)
            except OpsflowError as exc:
                dispatcher.finish(leaf, Outcome.FAILED, str(exc))
                self.summary.add(StepOutcome(leaf, "Failed", reason=str(exc)))

    def launch(self, dispatcher: Dispatcher, running: dict[PrefectFuture, Pending], leaf: str) -> None:
        """Submit the step's task, unless its circuit breaker is open: then its fallback runs."""
        node = self.graph.nodes[leaf]
        name = node.step.circuit_breaker
        if name is not None:
            allowed, state = self.breaker_change(name, lambda s: breaker.admit(s, *self.breaker_clock(name)))
            if not allowed:
                self.breaker_fallback(dispatcher, leaf, name, state)
                return
            if state.state == breaker.HALF_OPEN:
                self.logger.warning(f"circuit breaker `{name}` is half-open: `{leaf}` runs as its trial")
        options, kwargs = self.prepare(leaf, node.step, node.loc, node)
        running[options.submit(**kwargs)] = Pending(leaf, "step")

    # -- circuit breakers (state shared across runs in the records database) -----------------
    def breaker_clock(self, name: str) -> tuple[datetime, timedelta]:
        from flows.records.models import utcnow

        return utcnow(), timedelta(seconds=self.loaded.spec.circuit_breakers[name].recovery_timeout)

    def breaker_change(self, name: str, decide: Any) -> tuple[Any, breaker.BreakerState]:
        from flows.records.breakers import change
        from flows.records.db import session

        with session() as db:
            return change(db, name, decide, self.summary.workflow_id)

    def breaker_report(self, leaf: str, succeeded: bool) -> None:
        name = self.graph.nodes[leaf].step.circuit_breaker
        if name is None:
            return
        threshold = self.loaded.spec.circuit_breakers[name].failure_threshold
        now = self.breaker_clock(name)[0]
        _, state = self.breaker_change(name, lambda s: (None, breaker.record(s, succeeded, now, threshold)))
        if state.state == breaker.OPEN and not succeeded:
            self.logger.warning(f"circuit breaker `{name}` is open: {state.describe()}")

    def breaker_fallback(
        self, dispatcher: Dispatcher, leaf: str, name: str, state: breaker.BreakerState
    ) -> None:
        """The step does not run; its `fallback_steps` do, and the breaker's `fallback` modes are
        announced to every later command (OPSFLOW_FALLBACK_MODES)."""
        now, recovery = self.breaker_clock(name)
        reason = f"circuit breaker `{name}` {state.describe(recovery, now)}"
        modes = self.loaded.spec.circuit_breakers[name].fallback
        if modes:
            known = [m for m in self.env.get("OPSFLOW_FALLBACK_MODES", "").split(",") if m]
            self.env["OPSFLOW_FALLBACK_MODES"] = ",".join(dict.fromkeys([*known, *modes]))
        hooks = self.graph.nodes[leaf].hooks.get("fallback_steps", [])
        self.logger.warning(
            f"`{leaf}` not run: {reason}; "
            + (f"running its {len(hooks)} fallback step(s)" if hooks else "it has no fallback_steps")
        )
        outcomes = self.run_hooks(hooks, f"{leaf}.fallback_steps")
        if hooks and not any(o.failed for o in outcomes):
            mark_skipped.with_options(task_run_name=leaf)(leaf, f"{reason}; fallback ran")
            dispatcher.finish(leaf, Outcome.SKIPPED, reason)
            self.summary.add(StepOutcome(leaf, "Skipped", reason=f"{reason}; fallback ran"))
        else:
            why = f"{reason}; " + ("its fallback failed" if hooks else "no fallback_steps")
            dispatcher.finish(leaf, Outcome.FAILED, why)
            self.summary.add(StepOutcome(leaf, "Failed", reason=why))

    def step_done(
        self, dispatcher: Dispatcher, running: dict[PrefectFuture, Pending], leaf: str, state: State
    ) -> None:
        outcome = self.settle(leaf, state, "steps")
        self.breaker_report(leaf, not outcome.failed)
        node = self.graph.nodes[leaf]
        if outcome.failed:
            self.logger.error(f"step `{leaf}` failed: {outcome.reason}")
        else:
            self.capture(node.step, state, outcome)
        key = "on_failure" if outcome.failed else "on_success"
        hooks = node.hooks.get(key, [])
        if hooks:
            self.chain(running, Pending(leaf, "hooks", outcome), [(f"{leaf}.{key}", hooks)])
        else:
            self.after_own_hooks(dispatcher, running, leaf, outcome)

    def after_own_hooks(
        self, dispatcher: Dispatcher, running: dict[PrefectFuture, Pending], leaf: str, outcome: StepOutcome
    ) -> None:
        """The last step of a group to finish runs the group's hooks before it counts as finished,
        so the group's dependents wait for them."""
        chain = []
        for group in self.graph.ancestors(leaf):
            others = [x for x in self.graph.leaves_under(group) if x != leaf]
            if group in self.groups_done or any(x not in dispatcher.settled for x in others):
                break
            self.groups_done.add(group)
            failed = outcome.failed or any(dispatcher.settled[x].outcome is Outcome.FAILED for x in others)
            key = "on_failure" if failed else "on_success"
            if self.graph.nodes[group].hooks.get(key):
                chain.append((f"{group}.{key}", self.graph.nodes[group].hooks[key]))
        if chain:
            self.chain(running, Pending(leaf, "groups", outcome), chain)
        else:
            self.finish(dispatcher, leaf, outcome)

    def chain(
        self, running: dict[PrefectFuture, Pending], pending: Pending, hooks: list[tuple[str, list[Hook]]]
    ) -> None:
        run = lambda: [self.run_hooks(h, section) for section, h in hooks]  # noqa: E731
        future = run_hook_chain.with_options(task_run_name=f"{pending.leaf} {pending.phase}").submit(
            pending.leaf, run
        )
        running[future] = pending

    def finish(self, dispatcher: Dispatcher, leaf: str, outcome: StepOutcome) -> None:
        if outcome.failed:
            dispatcher.finish(leaf, Outcome.FAILED, outcome.reason)
        else:
            dispatcher.finish(leaf, Outcome.COMPLETED)
            self.completion_order.append(leaf)

    def run_unfinished_group_hooks(self, dispatcher: Dispatcher) -> None:
        """Groups whose last step was skipped or never started: their hooks run at the end."""
        for group, node in self.graph.nodes.items():
            if not node.is_group or group in self.groups_done:
                continue
            outcomes = [
                dispatcher.settled[x].outcome
                for x in self.graph.leaves_under(group)
                if x in dispatcher.settled
            ]
            failed = any(not o.satisfies for o in outcomes)
            key = "on_failure" if failed else "on_success" if Outcome.COMPLETED in outcomes else None
            if key and node.hooks.get(key):
                self.groups_done.add(group)
                self.run_hooks(node.hooks[key], f"{group}.{key}")

    def wait_limit(self) -> float | None:
        """Wake up at the deadline, so steps not yet started are settled as not run."""
        return None if self.deadline is None else max(0.05, self.deadline - time.time())

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
