"""The workflow file format: pydantic models of the YAML, nothing else.

Every key that seed 001 writes is here; unknown keys are rejected (`extra="forbid"`).
The field descriptions are the source of `docs/workflow-reference.md`
(`python -m flows.batch reference`), so they are written for users.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from flows.limits import MAX_PARALLEL, MAX_RETRIES
from flows.secrets import MASKED, is_secret_name, reference
from flows.workflow.units import parse_cpu, parse_duration, parse_memory, parse_timeout

Duration = Annotated[float, BeforeValidator(parse_duration)]
Timeout = Annotated[float, BeforeValidator(parse_timeout)]
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
        examples=["^(staging|production)$"],
        description="Regular expression the whole value must match (strings).",
    )
    min_items: int | None = Field(None, ge=0, examples=[1], description="Fewest items a list may have.")
    max_items: int | None = Field(None, ge=0, examples=[10], description="Most items a list may have.")
    enum: list[Any] | None = Field(None, examples=[["api", "worker"]], description="The only values allowed.")
    minimum: float | None = Field(None, examples=[1], description="Smallest number allowed (int parameters).")
    maximum: float | None = Field(
        None, examples=[100], description="Largest number allowed (int parameters)."
    )


ParameterType = Literal["string", "list", "array", "int", "integer", "float", "bool", "boolean"]


class Parameter(Model):
    """A value the caller passes with `--set name=value` (or `-e` for `environment`)."""

    name: str = Field(
        examples=["environment"],
        description="Name used in templates as `{{ .name }}`.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    description: str | None = Field(
        None, examples=["Target environment"], description="Shown by `list` and `plan`."
    )
    type: ParameterType | None = Field(
        None,
        examples=["list"],
        description="string, list/array (from `a,b` or a JSON list), int, float or bool. "
        "Default: inferred from `default`, else string.",
    )
    default: Any = Field(None, examples=["staging"], description="Value used when the caller gives none.")
    required: bool = Field(
        False, examples=[True], description="Fail (exit 3) when no value is given and there is no default."
    )
    validation: ParameterValidation | None = Field(
        None, examples=[{"pattern": "^v[0-9.]+$"}], description="Constraints checked before any step runs."
    )
    secret: bool | None = Field(
        None,
        examples=[True],
        description="The value is a secret: masked in every output line, error, artifact and record, "
        "and never stored in the flow run's parameters (the command line hands it to the run obscured; "
        "a deployment run takes it as a reference, `env:NAME` or `block:NAME`, resolved inside the run). "
        "Default: true when the name has a word such as password, passphrase, secret, token, key "
        "(`api_key`, `sshKey`), credential, auth, dsn, private, cookie or session; `false` opts out.",
    )

    @property
    def is_secret(self) -> bool:
        """`secret` as written, else what the name says (`db_password`, `api_key`...)."""
        return self.secret if self.secret is not None else is_secret_name(self.name)

    @property
    def shown_default(self) -> Any:
        """The default as listings show it: a secret's only when it is a reference (`env:NAME`)."""
        if self.is_secret and self.default not in (None, "") and not reference(self.default):
            return MASKED
        return self.default

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

    name: str = Field(
        examples=["is_production"], description="Name of the condition.", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )
    expression: str = Field(
        examples=["{{ .environment == 'production' }}"],
        description="Template expression, e.g. `{{ .environment == 'production' }}`.",
    )


class ValidationRule(Model):
    """An expression that must hold before any step runs; when false the run exits 3."""

    name: str = Field(examples=["valid_environment"], description="Name of the rule, shown when it fails.")
    expression: str = Field(
        examples=["{{ .environment in ['staging', 'production'] }}"],
        description="Template expression that must be true.",
    )
    message: str | None = Field(
        None,
        examples=["Environment must be staging or production"],
        description="What to tell the user when it is false.",
    )


class Prerequisite(Model):
    """A command that must succeed before any step runs; when it fails the run exits 2."""

    name: str = Field(
        examples=["kubectl_access"], description="Name of the prerequisite, shown when it fails."
    )
    command: str = Field(
        examples=["kubectl auth can-i create deployments"],
        description="Shell command (templated, values quoted).",
    )
    timeout: Timeout | None = Field(
        None,
        examples=["30s"],
        description="Seconds or `30s`/`5m`, more than 0; the command is killed after it.",
    )


class Retry(Model):
    """How often and how patiently a failing step is tried again."""

    attempts: int = Field(
        1, ge=1, le=MAX_RETRIES, examples=[3], description="Total tries, the first included (at most 100)."
    )
    delay: Duration = Field(
        0.0, examples=["60s"], description="Wait before the first retry (seconds or `30s`)."
    )
    backoff: Literal["fixed", "linear", "exponential"] = Field(
        "fixed",
        examples=["exponential"],
        description="fixed: `delay` each time; linear: delay×n; exponential: delay×2^(n-1).",
    )
    jitter: float = Field(
        0.1,
        ge=0,
        le=1,
        examples=[0.2],
        description="Random spread of each delay, as a fraction (0.1 = ±10%).",
    )
    max_delay: Duration = Field(600.0, examples=["5m"], description="Cap on any single delay, before jitter.")


class Resources(Model):
    """What a step (or each step of a group) reserves while it runs."""

    memory: Memory | None = Field(None, examples=["512Mi"], description="`512Mi`, `2Gi`, `1G` or bytes.")
    cpu: Cpu | None = Field(None, examples=["0.5"], description="Cores: `0.5`, `2` or `500m`.")


class StepMetrics(Model):
    """Per-step metrics to record."""

    track_duration: bool = Field(False, examples=[True], description="Record the step's duration.")
    track_success: bool = Field(
        False, examples=[True], description="Count the step's successes and failures."
    )
    custom_labels: dict[str, str] = Field(
        default_factory=dict, examples=[{"service": "api"}], description="Labels added to the step's metrics."
    )


class Step(Model):
    """One unit of work: a `command`, a `script`, or a group of `steps`."""

    name: str | None = Field(
        None,
        examples=["deploy_api"],
        description="Unique name (used by `depends_on`, logs and the summary). "
        "Unnamed steps get a stable generated name such as `staging_setup.2`.",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$",
    )
    description: str | None = Field(
        None, examples=["Deploy the API"], description="What the step does; shown by `plan`."
    )
    command: str | None = Field(
        None,
        examples=["./deploy.sh api {{ .version }}"],
        description="Shell command; template values are shell-quoted.",
    )
    script: str | None = Field(
        None,
        examples=["#!/bin/bash\nset -e\n./migrate.sh"],
        description="Multi-line script; a `#!` line picks its interpreter.",
    )
    shell: str | None = Field(
        None, examples=["sh"], description="Shell for `command`/`script` (default `bash`)."
    )
    steps: list[Step] | None = Field(
        None, examples=[[{"command": "echo hi"}]], description="Child steps: makes this step a group."
    )
    parallel: bool = Field(
        False, examples=[True], description="Run the group's children concurrently (honouring `depends_on`)."
    )
    parallel_limit: int | None = Field(
        None,
        ge=1,
        le=MAX_PARALLEL,
        examples=[2],
        description="Most children of the group running at once; implies `parallel`.",
    )
    depends_on: StrList = Field(
        default_factory=list,
        examples=[["deploy_api"]],
        description="Names of steps or groups (anywhere) that must finish first.",
    )
    priority: int | None = Field(
        None, examples=[1], description="Among ready steps, lower numbers start first."
    )
    when: str | None = Field(
        None,
        examples=["{{ .is_production }}"],
        description="Template; when false the step (and its children) is Skipped.",
    )
    condition: str | None = Field(
        None,
        examples=["{{ .outputs.status | fromJSON }}"],
        description="Same as `when`, for multi-line template blocks.",
    )
    timeout: Timeout | None = Field(
        None,
        examples=["5m"],
        description="Seconds or `5m`, more than 0; the command's process group is killed after it. On a group: each child's default.",
    )
    retry: Retry | None = Field(
        None, examples=[{"attempts": 3, "delay": "10s"}], description="Retry policy for this step."
    )
    on_failure: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"command": "./notify.sh failed"}]],
        description="Steps run when this step has failed for good.",
    )
    on_retry: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"command": "./cleanup.sh"}]],
        description="Steps run before each retry of this step.",
    )
    on_success: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"command": "./notify.sh ok"}]],
        description="Steps run after this step succeeded.",
    )
    capture_output: str | None = Field(
        None,
        examples=["status_check"],
        description="Store the step's stdout under this name: later templates read `{{ .outputs.NAME }}`.",
        pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$",
    )
    secret_output: bool | None = Field(
        None,
        examples=[True],
        description="The captured output is a secret: the step's stdout is not logged, its value is "
        "masked in every later line, and the record keeps it masked (`resume` runs the step again). "
        "Default: true when the `capture_output` name is a secret's (`db_token`, `api_key`...).",
    )
    manual_approval: bool = Field(
        False, examples=[True], description="Wait for an operator's approval before running."
    )
    health_check: bool = Field(
        False,
        examples=[True],
        description="This step (a group: each of its steps) checks health: its failure is the "
        "condition `health_check_failed` of `rollback.conditions` and `recovery`.",
    )
    idempotent: bool | None = Field(None, examples=[True], description="Declares the step safe to run again.")
    atomic: bool = Field(
        False,
        examples=[True],
        description="Group: all or nothing; completed children are compensated on failure.",
    )
    rollback_on_failure: bool = Field(
        False, examples=[True], description="Group: compensate completed children when one fails."
    )
    compensate: Annotated[
        list[Step], BeforeValidator(lambda v: [{"command": v}] if isinstance(v, str) else v)
    ] = Field(
        default_factory=list,
        examples=["./undo.sh"],
        description="Steps (or one command) that undo this step, run when its atomic group fails.",
    )
    dynamic: bool = Field(
        False,
        examples=[True],
        description="The command is decided at run time (all commands are rendered then).",
    )
    circuit_breaker: str | None = Field(
        None,
        examples=["database_operations"],
        description="Name of an entry of the workflow's `circuit_breakers`.",
    )
    fallback_steps: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"command": "./maintenance.sh on"}]],
        description="Steps run instead while the step's circuit breaker is open.",
    )
    resources: Resources | None = Field(
        None, examples=[{"memory": "512Mi", "cpu": "1"}], description="What this step reserves while it runs."
    )
    resource_requirements: Resources | None = Field(
        None,
        examples=[{"memory": "1Gi", "cpu": "2"}],
        description="Group: what each child reserves by default.",
    )
    metrics: StepMetrics | None = Field(
        None, examples=[{"track_duration": True}], description="Metrics recorded for this step."
    )

    @field_validator("capture_output", mode="before")
    @classmethod
    def _capture_true(cls, value: Any) -> Any:
        # `capture_output: true` is shorthand for "under the step's own name" (resolved below).
        return "" if value is True else (None if value is False else value)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if self.capture_output == "":
            if not (self.name and self.name.isidentifier()):
                raise ValueError("`capture_output: true` needs a step `name` usable as `.outputs.NAME`")
            object.__setattr__(self, "capture_output", self.name)  # frozen model: set once, here
        if self.secret_output and self.capture_output is None:
            raise ValueError("`secret_output` applies to a step with `capture_output`")
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
    def captures_secret(self) -> bool:
        """The captured output is a secret: `secret_output`, else what its name says."""
        if self.capture_output is None:
            return False
        return self.secret_output if self.secret_output is not None else is_secret_name(self.capture_output)

    @property
    def children(self) -> list[Step]:
        return self.steps or []


class PostExecution(Model):
    """Steps run at the very end, after `on_success` / `on_failure`."""

    success: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"command": "./cleanup.sh"}]],
        description="Run after a successful run.",
    )
    failure: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"command": "./collect-debug.sh"}]],
        description="Run after a failed run.",
    )


class Rollback(Model):
    """Steps that undo a failed run."""

    enabled: bool = Field(True, examples=[True], description="Whether rollback exists at all.")
    automatic: bool = Field(
        True, examples=[True], description="Run the rollback steps as soon as the run fails."
    )
    conditions: StrList = Field(
        default_factory=list,
        examples=[["health_check_failed"]],
        description="Outcomes that trigger the automatic rollback, any one is enough (the same as "
        "`recovery` conditions: `step_failed[:STEP]`, `step_timed_out[:STEP]`, `health_check_failed`, "
        "`run_timed_out`, `deployment_timeout`); empty means any failure.",
    )
    steps: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"command": "./switch.sh blue"}]],
        description="Steps run, in order, to roll back.",
    )


class ErrorHandling(Model):
    """What a failing step does to the rest of the run."""

    strategy: Literal["fail_fast", "continue_on_error", "retry"] = Field(
        "fail_fast",
        examples=["continue_on_error"],
        description="fail_fast: start nothing new after a failure; continue_on_error: run every step "
        "that does not depend on the failed one; retry: like fail_fast, but steps without their "
        "own `retry` are retried `max_retries` times.",
    )
    max_retries: int = Field(
        0,
        ge=0,
        le=MAX_RETRIES,
        examples=[3],
        description="Retries for steps without their own `retry` (strategy retry).",
    )
    retry_delay: Duration = Field(0.0, examples=["30s"], description="Delay between those retries.")


class RecoveryStrategy(Model):
    """Actions to take when named conditions occur."""

    name: str = Field(examples=["service_recovery"], description="Name of the strategy.")
    conditions: StrList = Field(
        default_factory=list,
        examples=[["step_failed:deploy_api", "health_check_failed"]],
        description="Outcomes that trigger it, any one is enough: `step_failed[:STEP]`, "
        "`step_timed_out[:STEP]`, `health_check_failed`, `prerequisite_failed[:NAME]`, `run_timed_out`, "
        "`deployment_timeout`.",
    )
    actions: StrList = Field(
        default_factory=list,
        examples=[["restart_service", "rollback"]],
        description="Run in order: names of `recovery.steps`, or the built-ins `rollback` and `notify`.",
    )


class Recovery(Model):
    """Recovery strategies (conditions → actions), evaluated at the end of a failed run."""

    enabled: bool = Field(True, examples=[True], description="Whether the strategies apply.")
    steps: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"name": "restart_service", "command": "systemctl restart api"}]],
        description="Steps that strategies' `actions` name; they run only as recovery actions.",
    )
    strategies: list[RecoveryStrategy] = Field(
        default_factory=list,
        examples=[
            [{"name": "service_recovery", "conditions": ["service_down"], "actions": ["restart_service"]}]
        ],
        description="The strategies.",
    )


class CircuitBreaker(Model):
    """A breaker shared by the steps that name it, across runs."""

    failure_threshold: int = Field(
        5, ge=1, le=1_000_000, examples=[5], description="Consecutive failures that open the breaker."
    )
    recovery_timeout: Duration = Field(
        60.0, examples=["60s"], description="How long it stays open before one trial run."
    )
    fallback: StrList = Field(
        default_factory=list, examples=[["use_cache"]], description="Actions while open."
    )


class ResourceLimits(Model):
    """Limits on the whole run (with `shared`: on every run that names the same pool)."""

    max_parallel: int | None = Field(
        None, ge=1, le=MAX_PARALLEL, examples=[5], description="Most steps running at once in the whole run."
    )
    memory_limit: Memory | None = Field(
        None, examples=["2Gi"], description="Total memory running steps may reserve."
    )
    cpu_limit: Cpu | None = Field(None, examples=["4"], description="Total CPU running steps may reserve.")
    shared: str | None = Field(
        None,
        examples=["build-host-1"],
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$",
        description="Name of a pool that `memory_limit` and `cpu_limit` bound for every run, of any "
        "workflow, naming the same pool on the same Prefect server (name it after the machine its "
        "runs share), not for this run alone: a step then also holds its `resources` from the "
        "Prefect global concurrency limits `opsflow-memory-NAME` (1 slot = 1Mi) and "
        "`opsflow-cpu-NAME` (1 slot = 1m), and waits, logging why, until they have room. Each run "
        "sets the pool's size to the limits it declares (a different size is changed and logged as "
        "a warning: workflows sharing a pool should declare the same limits). A step larger than "
        "the pool takes all of it. Slots are released when the step ends, fails or times out, and, "
        "when the run is killed outright, by the Prefect server once their 60 s lease lapses "
        "(about 75 s). `max_parallel` stays per run.",
    )

    @model_validator(mode="after")
    def _shared_needs_a_limit(self) -> ResourceLimits:
        if self.shared is not None and self.memory_limit is None and self.cpu_limit is None:
            raise ValueError("`shared` pools memory and CPU: give `memory_limit` and/or `cpu_limit` too")
        return self


class Notifications(Model):
    """Where and when to notify."""

    channels: StrList = Field(
        default_factory=list,
        examples=[["slack", "email"]],
        description="Channel names configured with apprise URLs.",
    )
    events: list[Literal["started", "completed", "failed", "requires_approval", "rolled_back"]] = Field(
        default_factory=list,
        examples=[["failed", "requires_approval"]],
        description="Events that send a notification.",
    )


class Alert(Model):
    """A condition on the run's metrics evaluated at the end."""

    condition: str = Field(
        examples=["deployment_duration > 1800"], description="e.g. `deployment_duration > 1800`."
    )
    severity: Literal["info", "warning", "error", "critical"] = Field(
        "warning", examples=["warning"], description="Severity of the alert."
    )


class Monitoring(Model):
    """Monitoring switches and alerts."""

    metrics: StrList = Field(
        default_factory=list, examples=[["deployment_duration"]], description="Built-in metrics to record."
    )
    alerts: list[Alert] = Field(
        default_factory=list,
        examples=[[{"condition": "deployment_duration > 1800"}]],
        description="Alerts evaluated at the end of the run.",
    )
    health_checks: (
        bool | list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")]]
    ) = Field(
        False,
        examples=[True, ["redis", "disk"]],
        description="Run opsflow's health checks (those of `health check` in the run's environment; "
        "a list: only these checks or kinds, each required) before the steps — unhealthy: nothing "
        "runs, exit 2 — and after them — unhealthy: the run fails with `health_check_failed`.",
    )
    metrics_collection: bool = Field(False, examples=[True], description="Collect metrics for the run.")
    log_aggregation: bool = Field(
        False,
        examples=[True],
        description="Write every output line of every step (uncapped) and the run's and steps' "
        "start/settle events as JSON lines, one file per run, for a log shipper (Vector, Promtail, "
        "Fluent Bit) to tail: `$OPSFLOW_LOG_AGGREGATION_DIR` (default `$OPSFLOW_HOME/logs/aggregate`)"
        "`/<workflow>/<YYYY-MM-DD>/<workflow_id>.jsonl`; secret parameters masked.",
    )
    alert_on_failure: bool = Field(False, examples=[True], description="Alert when the run fails.")


class CustomMetric(Model):
    """A metric the workflow defines."""

    name: str = Field(examples=["deployment_duration"], description="Metric name.")
    type: Literal["counter", "gauge", "histogram", "summary"] = Field(
        examples=["histogram"], description="Prometheus metric type."
    )
    description: str | None = Field(None, examples=["Time taken for deployment"], description="Help text.")


class WorkflowMetrics(Model):
    """Metrics collection for the run."""

    enabled: bool = Field(True, examples=[True], description="Collect metrics.")
    collectors: StrList = Field(
        default_factory=list, examples=[["prometheus"]], description="Where metrics go (prometheus, ...)."
    )
    custom_metrics: list[CustomMetric] = Field(
        default_factory=list,
        examples=[[{"name": "success_rate", "type": "counter"}]],
        description="Metrics the workflow defines.",
    )


class Workflow(Model):
    """A workflow file."""

    name: str = Field(
        examples=["basic-deployment"],
        description="Workflow name (logs, runs, summary).",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$",
    )
    description: str | None = Field(
        None, examples=["Deploy multiple services in sequence"], description="One line shown by `list`."
    )
    version: str | None = Field(None, examples=["1.2.0"], description="Version of the workflow file.")
    author: str | None = Field(None, examples=["DevOps Team"], description="Who maintains it.")
    documentation: str | None = Field(
        None, examples=["https://wiki.example.com/deploy"], description="Link to further documentation."
    )
    parameters: Annotated[list[Parameter], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"name": "environment", "default": "staging"}]],
        description="Values the caller passes.",
    )
    variables: dict[str, Any] = Field(
        default_factory=dict,
        examples=[{"namespace": "{{ .environment }}-services"}],
        description="Derived values (templates may use parameters and earlier variables).",
    )
    conditions: Annotated[list[NamedExpression], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"name": "is_production", "expression": "{{ .environment == 'production' }}"}]],
        description="Named booleans usable as `{{ .name }}`.",
    )
    validation: Annotated[list[ValidationRule], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"name": "env", "expression": "{{ .environment }}", "message": "give -e"}]],
        description="Expressions checked before any step (exit 3 when false).",
    )
    prerequisites: Annotated[list[Prerequisite], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"name": "tool", "command": "command -v kubectl"}]],
        description="Commands checked before any step (exit 2 when failing).",
    )
    steps: list[Step] = Field(
        examples=[[{"name": "check", "command": "./health.sh"}]],
        description="The steps, run in order (groups may run their children in parallel).",
    )
    on_failure: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"command": "./rollback.sh"}]],
        description="Steps run when the run failed (after rollback).",
    )
    on_success: Annotated[list[Step], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        examples=[[{"command": "./notify.sh ok"}]],
        description="Steps run when every step succeeded.",
    )
    post_execution: PostExecution | None = Field(
        None, examples=[{"failure": [{"command": "./debug.sh"}]}], description="Steps run at the very end."
    )
    rollback: Rollback | None = Field(
        None,
        examples=[{"steps": [{"command": "./switch.sh blue"}]}],
        description="How a failed run is undone.",
    )
    error_handling: ErrorHandling = Field(
        default_factory=ErrorHandling, examples=[{"strategy": "fail_fast"}], description="Failure strategy."
    )
    recovery: Recovery | None = Field(None, examples=[{"strategies": []}], description="Recovery strategies.")
    circuit_breakers: dict[str, CircuitBreaker] = Field(
        default_factory=dict,
        examples=[{"database_operations": {"failure_threshold": 5}}],
        description="Named circuit breakers.",
    )
    resource_limits: ResourceLimits | None = Field(
        None, examples=[{"max_parallel": 5}], description="Limits on the whole run."
    )
    notifications: Notifications | None = Field(
        None,
        examples=[{"channels": ["slack"], "events": ["failed"]}],
        description="Notification channels and events.",
    )
    monitoring: Monitoring | None = Field(
        None, examples=[{"alert_on_failure": True}], description="Monitoring switches and alerts."
    )
    metrics: WorkflowMetrics | None = Field(
        None, examples=[{"collectors": ["prometheus"]}], description="Metrics collection."
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # `version: 1.0` in YAML is a float; a version is text.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
