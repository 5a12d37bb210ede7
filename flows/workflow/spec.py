"""The workflow file format: pydantic models of the YAML, nothing else.

Every key that seed 001 writes is here; unknown keys are rejected (`extra="forbid"`).
The field descriptions are the source of `docs/workflow-reference.md`
(`python -m flows.batch reference`), so they are written for users.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from flows.workflow.units import parse_cpu, parse_duration, parse_memory

Duration = Annotated[float, BeforeValidator(parse_duration)]
Memory = Annotated[int, BeforeValidator(parse_memory)]
Cpu = Annotated[float, BeforeValidator(parse_cpu)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _none_as_empty(value: Any) -> Any:
    return [] if value is None else value


StrList = Annotated[list[str], BeforeValidator(_as_list)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParameterValidation(Model):
    """Constraints a parameter value must meet before anything runs."""

    pattern: str | None = Field(
        None,
        description="Regular expression the whole value must match (strings).",
        examples=["^(staging|production)$"],
    )
    min_items: int | None = Field(None, ge=0, description="Fewest items a list may have.")
    max_items: int | None = Field(None, ge=0, description="Most items a list may have.")
    enum: list[Any] | None = Field(None, description="The only values allowed.")
    minimum: float | None = Field(None, description="Smallest number allowed (int parameters).")
    maximum: float | None = Field(None, description="Largest number allowed (int parameters).")


ParameterType = Literal["string", "list", "array", "int", "integer", "float", "bool", "boolean"]


class Parameter(Model):
    """A value the caller passes with `--set name=value` (or `-e` for `environment`)."""

    name: str = Field(
        description="Name used in templates as `{{ .name }}`.", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )
    description: str | None = Field(None, description="Shown by `list` and `plan`.")
    type: ParameterType | None = Field(
        None,
        description="string, list/array (from `a,b` or a JSON list), int, float or bool. "
        "Default: inferred from `default`, else string.",
    )
    default: Any = Field(None, description="Value used when the caller gives none.")
    required: bool = Field(False, description="Fail (exit 3) when no value is given and there is no default.")
    validation: ParameterValidation | None = Field(
        None, description="Constraints checked before any step runs."
    )

    @property
    def kind(self) -> str:
        """The normalised type: string, list, int, float or bool."""
        aliases = {"array": "list", "integer": "int", "boolean": "bool"}
        if self.type:
            return aliases.get(self.type, self.type)
        if isinstance(self.default, list):
            return "list"
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "int"
        if isinstance(self.default, float):
            return "float"
        return "string"


class NamedExpression(Model):
    """A named boolean expression, usable in templates as `{{ .name }}`."""

    name: str = Field(description="Name of the condition.", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    expression: str = Field(description="Template expression, e.g. `{{ .environment == 'production' }}`.")


class ValidationRule(Model):
    """An expression that must hold before any step runs; when false the run exits 3."""

    name: str = Field(description="Name of the rule, shown when it fails.")
    expression: str = Field(description="Template expression that must be true.")
    message: str | None = Field(None, description="What to tell the user when it is false.")


class Prerequisite(Model):
    """A command that must succeed before any step runs; when it fails the run exits 2."""

    name: str = Field(description="Name of the prerequisite, shown when it fails.")
    command: str = Field(description="Shell command (templated, values quoted).")
    timeout: Duration | None = Field(
        None, description="Seconds or `30s`/`5m`; the command is killed after it."
    )


class Retry(Model):
    """How often and how patiently a failing step is tried again."""

    attempts: int = Field(1, ge=1, le=100, description="Total tries, the first included.")
    delay: Duration = Field(0.0, description="Wait before the first retry (seconds or `30s`).")
    backoff: Literal["fixed", "linear", "exponential"] = Field(
        "fixed", description="fixed: `delay` each time; linear: delay×n; exponential: delay×2^(n-1)."
    )
    jitter: float = Field(
        0.1, ge=0, le=1, description="Random spread of each delay, as a fraction (0.1 = ±10%)."
    )
    max_delay: Duration = Field(600.0, description="Cap on any single delay, before jitter.")


class Resources(Model):
    """What a step (or each step of a group) reserves while it runs."""

    memory: Memory | None = Field(None, description="`512Mi`, `2Gi`, `1G` or bytes.")
    cpu: Cpu | None = Field(None, description="Cores: `0.5`, `2` or `500m`.")


class StepMetrics(Model):
    """Per-step metrics to record."""

    track_duration: bool = Field(False, description="Record the step's duration.")
    track_success: bool = Field(False, description="Count the step's successes and failures.")
    custom_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to the step's metrics."
    )


class Step(Model):
    """One unit of work: a `command`, a `script`, or a group of `steps`."""

    name: str | None = Field(
        None,
        description="Unique name (used by `depends_on`, logs and the summary). "
        "Unnamed steps get a stable generated name such as `staging_setup.2`.",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$",
    )
    description: str | None = Field(None, description="What the step does; shown by `plan`.")
    command: str | None = Field(None, description="Shell command; template values are shell-quoted.")
    script: str | None = Field(None, description="Multi-line script; a `#!` line picks its interpreter.")
    shell: str | None = Field(None, description="Shell for `command`/`script` (default `bash`).")
    steps: list[Step] | None = Field(None, description="Child steps: makes this step a group.")
    parallel: bool = Field(
        False, description="Run the group's children concurrently (honouring `depends_on`)."
    )
    parallel_limit: int | None = Field(
        None, ge=1, description="Most children of the group running at once; implies `parallel`."
    )
    depends_on: StrList = Field(
        default_factory=list, description="Names of steps or groups (anywhere) that must finish first."
    )
    priority: int | None = Field(None, description="Among ready steps, lower numbers start first.")
    when: str | None = Field(None, description="Template; when false the step (and its children) is Skipped.")
    condition: str | None = Field(None, description="Same as `when`, for multi-line template blocks.")
    timeout: Duration | None = Field(
        None,
        description="Seconds or `5m`; the command's process group is killed after it. On a group: each child's default.",
    )
    retry: Retry | None = Field(None, description="Retry policy for this step.")
    on_failure: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Steps run when this step has failed for good."
    )
    on_retry: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Steps run before each retry of this step."
    )
    on_success: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Steps run after this step succeeded."
    )
    capture_output: str | None = Field(
        None,
        description="Store the step's stdout under this name: later templates read `{{ .outputs.NAME }}`.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    manual_approval: bool = Field(False, description="Wait for an operator's approval before running.")
    idempotent: bool | None = Field(None, description="Declares the step safe to run again.")
    atomic: bool = Field(
        False, description="Group: all or nothing; completed children are compensated on failure."
    )
    rollback_on_failure: bool = Field(
        False, description="Group: compensate completed children when one fails."
    )
    compensate: Annotated[
        list[Step], BeforeValidator(lambda v: [{"command": v}] if isinstance(v, str) else v)
    ] = Field(
        default_factory=list,
        description="Steps (or one command) that undo this step, run when its atomic group fails.",
    )
    dynamic: bool = Field(
        False, description="The command is decided at run time (all commands are rendered then)."
    )
    circuit_breaker: str | None = Field(
        None, description="Name of an entry of the workflow's `circuit_breakers`."
    )
    fallback_steps: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Steps run instead while the step's circuit breaker is open."
    )
    resources: Resources | None = Field(None, description="What this step reserves while it runs.")
    resource_requirements: Resources | None = Field(
        None, description="Group: what each child reserves by default."
    )
    metrics: StepMetrics | None = Field(None, description="Metrics recorded for this step.")

    @field_validator("capture_output", mode="before")
    @classmethod
    def _capture_true(cls, value: Any) -> Any:
        # `capture_output: true` is common shorthand; the engine names it after the step later.
        return "" if value is True else (None if value is False else value)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("command", "script") if getattr(self, k) is not None]
        if "steps" in self.model_fields_set:
            kinds.append("steps")
        if len(kinds) > 1:
            raise ValueError(f"a step takes one of command, script or steps, not {' and '.join(kinds)}")
        if not kinds:
            raise ValueError("a step needs something to do: give `command`, `script` or `steps`")
        if kinds != ["steps"]:
            for key in (
                "parallel",
                "parallel_limit",
                "atomic",
                "rollback_on_failure",
                "resource_requirements",
            ):
                if key in self.model_fields_set and getattr(self, key):
                    raise ValueError(f"`{key}` applies to a group of `steps`, not to a single command")
        return self

    @property
    def is_group(self) -> bool:
        return self.command is None and self.script is None

    @property
    def children(self) -> list[Step]:
        return self.steps or []


class PostExecution(Model):
    """Steps run at the very end, after `on_success` / `on_failure`."""

    success: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Run after a successful run."
    )
    failure: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Run after a failed run."
    )


class Rollback(Model):
    """Steps that undo a failed run."""

    enabled: bool = Field(True, description="Whether rollback exists at all.")
    automatic: bool = Field(True, description="Run the rollback steps as soon as the run fails.")
    conditions: StrList = Field(
        default_factory=list,
        description="Named outcomes that trigger rollback (`step_failed`, `deployment_timeout`, "
        "`health_check_failed`); empty means any failure.",
    )
    steps: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Steps run, in order, to roll back."
    )


class ErrorHandling(Model):
    """What a failing step does to the rest of the run."""

    strategy: Literal["fail_fast", "continue_on_error", "retry"] = Field(
        "fail_fast",
        description="fail_fast: start nothing new after a failure; continue_on_error: run every step "
        "that does not depend on the failed one; retry: like fail_fast, but steps without their "
        "own `retry` are retried `max_retries` times.",
    )
    max_retries: int = Field(
        0, ge=0, le=100, description="Retries for steps without their own `retry` (strategy retry)."
    )
    retry_delay: Duration = Field(0.0, description="Delay between those retries.")


class RecoveryStrategy(Model):
    """Actions to take when named conditions occur."""

    name: str = Field(description="Name of the strategy.")
    conditions: StrList = Field(default_factory=list, description="Named outcomes that trigger it.")
    actions: StrList = Field(default_factory=list, description="Names of steps or built-in actions to run.")


class Recovery(Model):
    """Recovery strategies (conditions → actions)."""

    enabled: bool = Field(True, description="Whether the strategies apply.")
    strategies: list[RecoveryStrategy] = Field(default_factory=list, description="The strategies.")


class CircuitBreaker(Model):
    """A breaker shared by the steps that name it, across runs."""

    failure_threshold: int = Field(5, ge=1, description="Consecutive failures that open the breaker.")
    recovery_timeout: Duration = Field(60.0, description="How long it stays open before one trial run.")
    fallback: StrList = Field(default_factory=list, description="Actions while open.")


class ResourceLimits(Model):
    """Limits on the whole run."""

    max_parallel: int | None = Field(None, ge=1, description="Most steps running at once in the whole run.")
    memory_limit: Memory | None = Field(None, description="Total memory running steps may reserve.")
    cpu_limit: Cpu | None = Field(None, description="Total CPU running steps may reserve.")


class Notifications(Model):
    """Where and when to notify."""

    channels: StrList = Field(default_factory=list, description="Channel names configured with apprise URLs.")
    events: list[Literal["started", "completed", "failed", "requires_approval", "rolled_back"]] = Field(
        default_factory=list, description="Events that send a notification."
    )


class Alert(Model):
    """A condition on the run's metrics evaluated at the end."""

    condition: str = Field(description="e.g. `deployment_duration > 1800`.")
    severity: Literal["info", "warning", "error", "critical"] = Field(
        "warning", description="Severity of the alert."
    )


class Monitoring(Model):
    """Monitoring switches and alerts."""

    metrics: StrList = Field(default_factory=list, description="Built-in metrics to record.")
    alerts: list[Alert] = Field(default_factory=list, description="Alerts evaluated at the end of the run.")
    health_checks: bool = Field(False, description="Run health checks around the run.")
    metrics_collection: bool = Field(False, description="Collect metrics for the run.")
    log_aggregation: bool = Field(False, description="Ship logs to the aggregator.")
    alert_on_failure: bool = Field(False, description="Alert when the run fails.")


class CustomMetric(Model):
    """A metric the workflow defines."""

    name: str = Field(description="Metric name.")
    type: Literal["counter", "gauge", "histogram", "summary"] = Field(description="Prometheus metric type.")
    description: str | None = Field(None, description="Help text.")


class WorkflowMetrics(Model):
    """Metrics collection for the run."""

    enabled: bool = Field(True, description="Collect metrics.")
    collectors: StrList = Field(default_factory=list, description="Where metrics go (prometheus, ...).")
    custom_metrics: list[CustomMetric] = Field(
        default_factory=list, description="Metrics the workflow defines."
    )


class Workflow(Model):
    """A workflow file."""

    name: str = Field(
        description="Workflow name (logs, runs, summary).", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
    )
    description: str | None = Field(None, description="One line shown by `list`.")
    version: str | None = Field(None, description="Version of the workflow file.")
    author: str | None = Field(None, description="Who maintains it.")
    documentation: str | None = Field(None, description="Link to further documentation.")
    parameters: Annotated[list[Parameter], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Values the caller passes."
    )
    variables: dict[str, Any] = Field(
        default_factory=dict,
        description="Derived values (templates may use parameters and earlier variables).",
    )
    conditions: Annotated[list[NamedExpression], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Named booleans usable as `{{ .name }}`."
    )
    validation: Annotated[list[ValidationRule], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Expressions checked before any step (exit 3 when false)."
    )
    prerequisites: Annotated[list[Prerequisite], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Commands checked before any step (exit 2 when failing)."
    )
    steps: list[Step] = Field(
        description="The steps, run in order (groups may run their children in parallel)."
    )
    on_failure: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Steps run when the run failed (after rollback)."
    )
    on_success: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Steps run when every step succeeded."
    )
    post_execution: PostExecution | None = Field(None, description="Steps run at the very end.")
    rollback: Rollback | None = Field(None, description="How a failed run is undone.")
    error_handling: ErrorHandling = Field(default_factory=ErrorHandling, description="Failure strategy.")
    recovery: Recovery | None = Field(None, description="Recovery strategies.")
    circuit_breakers: dict[str, CircuitBreaker] = Field(
        default_factory=dict, description="Named circuit breakers."
    )
    resource_limits: ResourceLimits | None = Field(None, description="Limits on the whole run.")
    notifications: Notifications | None = Field(None, description="Notification channels and events.")
    monitoring: Monitoring | None = Field(None, description="Monitoring switches and alerts.")
    metrics: WorkflowMetrics | None = Field(None, description="Metrics collection.")

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # `version: 1.0` in YAML is a float; a version is text.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
