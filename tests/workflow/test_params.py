"""Parameters: --set parsing, types, validation rules, builtins, variables, conditions."""

from __future__ import annotations

import pytest

from flows.errors import ValidationError
from flows.workflow.load import load_workflow
from flows.workflow.params import bind, parse_sets

from ..conftest import FIXTURES


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["env=production,version=v2.1.0"], {"env": "production", "version": "v2.1.0"}),
        (["services=api,worker", "tag=1"], {"services": "api,worker", "tag": "1"}),
        (["services=api,worker,tag=2"], {"services": "api,worker", "tag": "2"}),
        (['services=["a,b","c"],x=1'], {"services": '["a,b","c"]', "x": "1"}),
        (["msg=x; touch /tmp/p"], {"msg": "x; touch /tmp/p"}),
        (["empty="], {"empty": ""}),
        (["a=1", "a=2"], {"a": "2"}),
    ],
)
def test_parse_sets(args, expected):
    assert parse_sets(args) == expected


@pytest.mark.parametrize("bad", ["novalue", "=x", "1a=b", "a b=c"])
def test_parse_sets_rejects(bad):
    with pytest.raises(ValidationError, match="key=value"):
        parse_sets([bad])


def _bind(name, sets=None, env=None):
    return bind(
        load_workflow(FIXTURES / "seed001" / name),
        sets or {},
        environment=env,
        default_environment="development",
        workflow_id="wf-1",
    )


def test_defaults_types_and_variables():
    bound = _bind("basic-deployment.yaml")
    ctx = bound.context
    assert ctx["environment"] == "staging"
    assert ctx["services"] == ["api", "worker", "scheduler"]
    assert ctx["namespace"] == "staging-services"
    assert ctx["timeout"] == 300
    assert ctx["workflow_id"] == "wf-1"


def test_env_flag_sets_environment_and_lists_parse():
    ctx = _bind("basic-deployment.yaml", {"services": '["a"]'}, env="production").context
    assert ctx["environment"] == "production"
    assert ctx["namespace"] == "production-services"
    assert ctx["services"] == ["a"]


def test_conditions_are_evaluated():
    ctx = _bind("advanced-deployment.yaml", {"services": "api"}, env="production").context
    assert ctx["is_production"] is True
    assert ctx["critical_services"] is True
    ctx = _bind("advanced-deployment.yaml", {"services": "web"}, env="staging").context
    assert ctx["is_production"] is False
    assert ctx["critical_services"] is False


@pytest.mark.parametrize(
    ("sets", "env", "needle"),
    [
        ({"services": "api"}, "qa", "does not match"),
        ({"services": ",".join("abcdefghijk")}, "staging", "at most 10"),
        ({}, "staging", "at least 1"),
        ({"servics": "api"}, "staging", "did you mean `services`"),
        ({"workflow_id": "x", "services": "a"}, "staging", "set by opsflow"),
    ],
)
def test_parameter_validation(sets, env, needle):
    with pytest.raises(ValidationError, match=needle):
        _bind("advanced-deployment.yaml", sets, env=env)


def test_validation_rules_exit_3_with_their_message():
    with pytest.raises(ValidationError, match="Environment must be staging or production"):
        _bind("best-practice-example.yaml", {"services": "api"}, env="qa")
    with pytest.raises(ValidationError, match="Environment and services parameters are required"):
        _bind("best-practice-example.yaml", {}, env="staging")
    bound = _bind("best-practice-example.yaml", {"services": "api"}, env="staging")
    assert bound.warnings == ["parameter `services` is not declared by the workflow; passed as text"]


def test_types_and_nul_bytes(write_workflow):
    path = write_workflow(
        "name: t\nparameters:\n  - name: n\n    type: int\n    default: 3\n    validation: {minimum: 1, maximum: 5}\n"
        "  - name: flag\n    type: bool\n    default: false\n  - name: s\n    required: true\n"
        "  - name: color\n    validation: {enum: [red, blue]}\n    default: red\nsteps:\n  - command: 'true'\n"
    )
    loaded = load_workflow(path)

    def run(**sets):
        return bind(loaded, sets, environment=None, default_environment="dev", workflow_id="w").context

    assert run(s="x")["n"] == 3
    assert run(s="x", n="5", flag="yes")["flag"] is True
    for sets, needle in [
        ({}, "required"),
        ({"s": "x", "n": "seven"}, "must be an int"),
        ({"s": "x", "n": "9"}, "above the maximum"),
        ({"s": "x", "flag": "maybe"}, "true or false"),
        ({"s": "a\x00b"}, "NUL"),
        ({"s": "x", "color": "green"}, "not one of"),
    ]:
        with pytest.raises(ValidationError, match=needle):
            run(**sets)


def test_logical_date_is_built_in_given_or_now_and_not_settable():
    loaded = load_workflow(FIXTURES / "seed001" / "basic-deployment.yaml")
    args = {"environment": None, "default_environment": "dev", "workflow_id": "w"}
    tick = "2026-11-01T02:00:00+01:00"
    assert bind(loaded, {}, **args, logical_date=tick).context["logical_date"] == tick
    from datetime import UTC, datetime

    before = datetime.now(UTC)
    now = datetime.fromisoformat(bind(loaded, {}, **args).context["logical_date"])
    assert now.tzinfo is not None and before.replace(microsecond=0) <= now <= datetime.now(UTC)
    with pytest.raises(ValidationError, match="`logical_date` is set by opsflow"):
        bind(loaded, {"logical_date": tick}, **args)
