"""Dispatcher: order, group limits, global limit, priority, failure strategies."""

from __future__ import annotations

from pathlib import Path

from flows.workflow.dispatch import Dispatcher, Outcome
from flows.workflow.graph import build_graph
from flows.workflow.load import parse_workflow

from ..conftest import FIXTURES


def _graph(text: str):
    return build_graph(parse_workflow(text, Path("t.yaml")))


def _seed_graph(name: str):
    return build_graph(parse_workflow((FIXTURES / "seed001" / name).read_text(), Path(name)))


def drain(dispatcher: Dispatcher, fail: set[str] = frozenset()) -> list[list[str]]:
    """Run to the end, finishing every started batch at once; returns the batches."""
    waves = []
    while not dispatcher.done:
        started = dispatcher.ready()
        if not started:
            break
        waves.append(started)
        for leaf in started:
            dispatcher.finish(leaf, Outcome.FAILED if leaf in fail else Outcome.COMPLETED)
    return waves


def test_basic_order_and_parallel_group():
    waves = drain(Dispatcher(_seed_graph("basic-deployment.yaml")))
    assert waves == [
        ["pre_deployment_check"],
        ["deploy_api"],
        ["deploy_worker", "deploy_scheduler"],
        ["post_deployment_test"],
    ]


def test_priority_and_group_limit():
    waves = drain(Dispatcher(_seed_graph("parallel-operations.yaml")))
    # parallel_limit 3; priority 1 first, then 3s (backup_replicas waits for backup_primary)
    assert waves[0] == ["backup_primary", "analyze_tables"]
    assert sorted(waves[1]) == ["backup_replicas", "vacuum_database"]
    assert waves[2] == ["update_api_configs", "update_worker_configs"]
    assert waves[3] == ["restart_services"]


def test_group_limit_caps_concurrency():
    steps = "\n".join(f"      - name: s{i}\n        command: 'true'" for i in range(5))
    dispatcher = Dispatcher(
        _graph(f"name: w\nsteps:\n  - name: g\n    parallel_limit: 2\n    steps:\n{steps}\n")
    )
    assert dispatcher.ready() == ["s0", "s1"]
    assert dispatcher.ready() == []
    dispatcher.finish("s1", Outcome.COMPLETED)
    assert dispatcher.ready() == ["s2"]


def test_global_limit_and_lower_priority_first():
    steps = "\n".join(
        f"      - name: s{i}\n        command: 'true'\n        priority: {5 - i}" for i in range(5)
    )
    dispatcher = Dispatcher(
        _graph(f"name: w\nsteps:\n  - name: g\n    parallel: true\n    steps:\n{steps}\n"), limit=2
    )
    assert dispatcher.ready() == ["s4", "s3"]


def test_fail_fast_stops_new_work():
    dispatcher = Dispatcher(_seed_graph("basic-deployment.yaml"))
    drain(dispatcher, fail={"deploy_api"})
    assert dispatcher.settled["deploy_api"].outcome is Outcome.FAILED
    assert dispatcher.settled["post_deployment_test"].outcome is Outcome.NOT_RUN
    assert dispatcher.settled["deploy_worker"].outcome is Outcome.NOT_RUN


def test_continue_on_error_runs_independent_steps():
    dispatcher = Dispatcher(_seed_graph("parallel-operations.yaml"), fail_fast=False)
    drain(dispatcher, fail={"backup_primary"})
    outcomes = {leaf: s.outcome for leaf, s in dispatcher.settled.items()}
    assert outcomes["backup_replicas"] is Outcome.NOT_RUN  # depends on the failed step
    assert outcomes["vacuum_database"] is Outcome.COMPLETED  # independent
    assert outcomes["restart_services"] is Outcome.NOT_RUN  # its group depends on the failed group
    assert "backup_primary" in dispatcher.settled["backup_replicas"].reason


def test_skipped_group_satisfies_dependents():
    dispatcher = Dispatcher(_seed_graph("environment-specific.yaml"))
    first = dispatcher.ready()
    assert first == ["development_setup.1"]
    dispatcher.skip("development_setup", "when is false")
    assert dispatcher.ready() == ["staging_setup.1"]
    assert dispatcher.settled["development_setup.3"].outcome is Outcome.SKIPPED


def test_empty_group_is_done_at_once():
    waves = drain(Dispatcher(_seed_graph("best-practice-example.yaml")))
    assert waves == [["health_check"], ["resource_check"]]
