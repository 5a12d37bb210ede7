"""The workflow flow: `run_workflow(path, ...)`, one task run per step, a summary artifact.

`run_workflow` is a plain module-level flow, so `prefect deploy` can deploy any workflow
file by passing its path as a parameter. With `tasks.py` and `execute.py` it is the
Prefect-aware core of the engine; `health_gate.py`, `pools.py` and `logship.py` call Prefect
(lazily) for what they add to a run.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import SecretStr

from flows.errors import DependencyError, OpsflowError, StepFailure
from flows.masking import Masker, environment_secrets, masked_error, masking
from flows.masking import mask as mask_text
from flows.secrets import plain_secrets, refuse_plain_secrets
from flows.workflow import logship
from flows.workflow import plan as planning
from flows.workflow import state as workflow_state
from flows.workflow.check import analyse
from flows.workflow.conditions import HEALTH_SECTION, matching
from flows.workflow.dispatch import Dispatcher
from flows.workflow.execute import TIMEOUT_REASON, WorkflowRun
from flows.workflow.graph import Graph, Hook
from flows.workflow.health_gate import run_health_checks
from flows.workflow.load import LoadedWorkflow, load_workflow
from flows.workflow.notifications import RunNotifier
from flows.workflow.params import bind, secret_names
from flows.workflow.recovery import recover
from flows.workflow.report import RunSummary
from flows.workflow.spec import Step
from flows.workflow.tasks import stop_commands_on_signals
from flows.workflow.units import parse_duration

THREADS = 64  # the dispatcher enforces the real limits; this only has to be large enough


def _flow_run_name() -> str:
    if "backfill" in (current_flow_run.tags or []):  # `opsflow backfill` named it after its tick
        return current_flow_run.name
    params = current_flow_run.parameters or {}
    path = str(params.get("path", "workflow"))
    try:
        return load_workflow(path).spec.name
    except OpsflowError:
        return os.path.splitext(os.path.basename(path))[0]


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
    logical_date: str | None = None,
    save_state: bool = True,
    resume_from: str | None = None,
) -> State:
    """Run the YAML workflow at `path`: one task run per step, summary as a table artifact.

    `logical_date` (`{{ .logical_date }}`): the moment the run stands for, as an ISO datetime;
    `opsflow backfill` passes the cron tick, other runs get their scheduled start time.
    `save_state`: record the run and its steps (history, `resume`); `resume_from`: the id of an
    earlier run of the same file whose completed steps are restored instead of run again.
    """
    start = current_flow_run.scheduled_start_time  # a run made by the scheduler: its cron tick
    logical_date = logical_date or (start.isoformat(timespec="seconds") if start else None)
    # Every log line of the run, its errors included, goes through the run's secrets (masking.py).
    with masking(Masker(environment_secrets())) as mask:
        try:
            with stop_commands_on_signals(), logship.closing():
                return _run(
                    path,
                    parameters,
                    environment,
                    parallel,
                    continue_on_error,
                    timeout,
                    default_environment,
                    logical_date,
                    save_state,
                    resume_from,
                    mask,
                )
        except OpsflowError as err:
            # Bad input or an unmet prerequisite: one line in the run's log, not a traceback.
            err = masked_error(err, mask)
            get_run_logger().error(str(err))
            workflow_state.abandon(str(current_flow_run.id), err)
            return Failed(message=str(err), data=err)
        except Exception as exc:
            # Not ours: its traceback is logged masked here; Prefect would log it in clear.
            get_run_logger().exception("the run failed unexpectedly")
            message = mask(f"{type(exc).__name__}: {exc}")
            return Failed(message=message, data=RuntimeError(message))


def _run(
    path: str,
    parameters: dict[str, Any] | None,
    environment: str | None,
    parallel: int | None,
    continue_on_error: bool,
    timeout: str | None,
    default_environment: str,
    logical_date: str | None,
    save_state: bool = True,
    resume_from: str | None = None,
    mask: Masker | None = None,
) -> State:
    logger = get_run_logger()
    mask = mask or Masker()
    loaded = load_workflow(path)
    parameters = parameters or {}
    # A secret in clear in the parameters is in Prefect's database: take it out, refuse the run.
    refuse_plain_secrets(plain_secrets(parameters, secret_names(loaded, parameters).__contains__))
    given = {k: v if isinstance(v, str | SecretStr) else _as_text(v) for k, v in parameters.items()}
    analysis = analyse(loaded, given)
    graph = analysis.graph
    workflow_id = str(current_flow_run.id or "local")
    bound = bind(
        loaded,
        given,
        environment=environment,
        default_environment=default_environment,
        workflow_id=workflow_id,
        logical_date=logical_date,
        resolve=("env", "block"),
    )
    mask.add(bound.secret_values())
    for warning in [*analysis.warnings, *bound.warnings]:
        logger.warning(warning)
    workflow_state.await_leftovers(loaded.spec.name, resume_from, logger)
    recorder = workflow_state.Recorder.start(
        workflow_id,
        workflow=loaded.spec.name,
        path=path,
        environment=str(bound.context["environment"]),
        parameters=parameters,
        options={"parallel": parallel, "continue_on_error": continue_on_error, "timeout": timeout},
        resumed_from=resume_from,
        logger=logger,
        enabled=save_state,
        is_secret=bound.is_secret,
    )
    unenforced = planning.unenforced_workflow_fields(loaded.spec) + [
        f"{n.id}: {key}" for n in graph.nodes.values() for key in planning.unenforced_step_fields(n.step)
    ]
    if unenforced:
        logger.warning("accepted, not yet enforced: " + "; ".join(unenforced))
    summary = RunSummary(loaded.spec.name, str(bound.context["environment"]), workflow_id)
    logship.start(
        loaded.spec,
        summary,
        bound.shown_parameters(),
        logger,
        path_to_file=path,
        mask=mask,
        is_secret=bound.is_secret,
    )
    notifier = RunNotifier(
        loaded.spec.notifications,
        loaded.spec.name,
        str(bound.context["environment"]),
        workflow_id,
        logger,
        mask=mask,
    )
    notifier.emit("started")
    deadline = time.time() + parse_duration(timeout) if timeout else None
    run = WorkflowRun(
        loaded,
        graph,
        bound.context,
        summary,
        deadline,
        _command_env(bound.context, bound.parameters),
        notifier,
    )
    run.recorder = recorder
    run.mask = mask

    health_checks = bool(loaded.spec.monitoring and loaded.spec.monitoring.health_checks)
    unmet = _unmet_prerequisite(run)
    if unmet is None and health_checks:
        before = run_health_checks(run, "before")
        if before.failed:
            unmet = f"health checks before the steps: {before.reason}"
    if unmet:
        run.logger.error(unmet)
        recover(run, notifier)
        return _notified(notifier, _finish(summary, failed_main=[], unmet=unmet), summary, loaded, graph)
    strategy = "continue_on_error" if continue_on_error else loaded.spec.error_handling.strategy
    dispatcher = Dispatcher(
        graph,
        limit=planning.effective_parallel(loaded.spec, parallel),
        fail_fast=strategy != "continue_on_error",
        memory_limit=limits.memory_limit if (limits := loaded.spec.resource_limits) else None,
        cpu_limit=limits.cpu_limit if limits else None,
    )
    if resume_from:
        workflow_state.restore(run, dispatcher, resume_from)
    run.run_steps(dispatcher)
    failed = [s for s in summary.steps if s.failed and s.section == "steps"]
    unhealthy = health_checks and run_health_checks(run, "after").failed
    if failed or run.timed_out or unhealthy:
        run.compensate([s.step for s in failed])
        _automatic_rollback(run, notifier, [s.step for s in failed])
        run.run_hooks(graph.sections["on_failure"], "on_failure")
        recover(run, notifier)
        run.run_hooks(graph.sections["post_failure"], "post_execution.failure")
    else:
        run.run_hooks(graph.sections["on_success"], "on_success")
        run.run_hooks(graph.sections["post_success"], "post_execution.success")
    # The table reads in plan order: prerequisites, steps as written, then hooks as they ran.
    order = {node_id: i for i, node_id in enumerate(graph.nodes)}
    sections = {"prerequisites": 0, "steps": 1, "health_checks:after": 2}
    summary.steps.sort(
        key=lambda s: (
            sections.get(s.step if s.section == HEALTH_SECTION else s.section, 3),
            order.get(s.step, 0) if s.section == "steps" else 0,
        )
    )
    state = _finish(summary, failed_main=[s.step for s in failed], timed_out=run.timed_out)
    return _notified(notifier, state, summary, loaded, graph)


def _notified(
    notifier: RunNotifier, state: State, summary: RunSummary, loaded: LoadedWorkflow, graph: Graph
) -> State:
    """Send `completed` or `failed` for the finished run, record its metrics and send the alerts
    that fire; the state is returned unchanged."""
    failed = [s.step for s in summary.steps if s.failed]
    notifier.emit(
        "completed" if summary.exit_code == 0 else "failed",
        duration=(summary.finished or time.time()) - summary.started,
        failed=failed,
        detail=summary.message or "",
    )
    _metrics_and_alerts(loaded, graph, summary, notifier)
    return state


def _automatic_rollback(run: WorkflowRun, notifier: RunNotifier, failed: list[str]) -> None:
    """Run `rollback.steps` when the rollback is automatic and one of its conditions holds
    (no conditions: any failure); otherwise say why it did not run."""
    rollback = run.loaded.spec.rollback
    if not (rollback and rollback.enabled and rollback.automatic):
        return
    if rollback.conditions:
        held = matching(rollback.conditions, run.summary, run.graph, run.timed_out)
        if not held:
            run.logger.warning(
                f"rollback not run: none of its conditions held ({', '.join(rollback.conditions)})"
            )
            return
        run.logger.warning(f"rolling back: {', '.join(held)}")
    run.run_hooks(run.graph.sections["rollback"], "rollback")
    notifier.emit("rolled_back", failed=failed)


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


def _finish(
    summary: RunSummary, failed_main: list[str], unmet: str | None = None, timed_out: bool = False
) -> State:
    summary.finished = time.time()
    for step in summary.steps:  # reasons may quote a command's output
        step.reason = mask_text(step.reason)
    hook_failures = [s.step for s in summary.steps if s.failed and s.section not in ("steps", HEALTH_SECTION)]
    unhealthy = [s for s in summary.steps if s.failed and s.section == HEALTH_SECTION]
    if unmet:
        summary.state, summary.exit_code, summary.message = "Failed", DependencyError.exit_code, unmet
    elif failed_main or hook_failures or timed_out or unhealthy:
        summary.state, summary.exit_code = "Failed", StepFailure.exit_code
        parts = [TIMEOUT_REASON.removeprefix("not started: ")] if timed_out else []
        if failed_main:
            parts.append(f"failed: {', '.join(failed_main)}")
        parts += [f"health checks {s.step.partition(':')[2]} the steps: {s.reason}" for s in unhealthy]
        if hook_failures:
            parts.append(f"hooks failed: {', '.join(hook_failures)}")
        summary.message = "; ".join(parts)
    else:
        summary.state, summary.exit_code = "Completed", 0
    summary.message = mask_text(summary.message)
    workflow_state.finish(summary)
    logship.finish(summary)
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
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _command_env(context: dict[str, Any], parameters: dict[str, Any]) -> dict[str, str]:
    """What every command sees: the run's identity, and each parameter as OPSFLOW_PARAM_<NAME>
    (lists as JSON), so scripts in any language can read values without template splicing."""
    env = {
        **os.environ,
        "OPSFLOW_WORKFLOW": str(context["workflow"]),
        "OPSFLOW_WORKFLOW_ID": str(context["workflow_id"]),
        "OPSFLOW_ENVIRONMENT": str(context["environment"]),
        "OPSFLOW_LOGICAL_DATE": str(context["logical_date"]),
    }
    for name, value in parameters.items():
        env[f"OPSFLOW_PARAM_{name.upper()}"] = _as_text(value) if value is not None else ""
    return env


def _metrics_and_alerts(
    loaded: LoadedWorkflow, graph: Graph, summary: RunSummary, notifier: RunNotifier
) -> None:
    """The run's metrics to $OPSFLOW_HOME/metrics and a markdown artifact; firing alerts sent.
    Writing metrics must never change the run's result: a failure here is a warning."""
    from flows.workflow import alerts, metrics

    if not metrics.enabled(loaded, graph):
        return
    try:
        recorded = metrics.record_run(loaded, graph, summary)
    except OSError as err:
        notifier.logger.warning(f"metrics not written: {err}")
        return
    rows = "\n".join(f"| {name} | {value:g} |" for name, value in sorted(recorded.values.items()))
    create_markdown_artifact(
        key=_artifact_key(summary.workflow) + "-metrics",
        markdown=f"| metric | value |\n|---|---|\n{rows}\n\nPrometheus text: `{recorded.prom_path}`",
        description=f"{summary.workflow} metrics",
    )
    fired = alerts.firing_alerts(loaded.spec.monitoring, recorded.values, failed=summary.exit_code != 0)
    for firing in fired:
        notifier.logger.warning(f"alert [{firing.severity}] {firing.condition} (value {firing.value:g})")
    channels = list(loaded.spec.notifications.channels) if loaded.spec.notifications else []
    alerts.send_alerts(
        fired, channels, summary.workflow, summary.environment, summary.workflow_id, notifier.logger.warning
    )
