"""Policy over prefect.yaml: entrypoints import, crons parse, names unique, parameters fit."""

from __future__ import annotations

import importlib
import inspect

import pytest
import yaml

from flows.workflow.load import load_workflow

from .conftest import ROOT

CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = CONFIG["deployments"]


def _flow(entrypoint: str):
    module_path, name = entrypoint.split(":")
    module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def test_names_are_unique():
    names = [d["name"] for d in DEPLOYMENTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_imports_and_parameters_fit(deployment):
    flow = _flow(deployment["entrypoint"])
    signature = inspect.signature(flow.fn)
    params = deployment.get("parameters", {})
    assert set(params) <= set(signature.parameters), set(params) - set(signature.parameters)
    missing = [
        n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty and n not in params
    ]
    # A deployment tagged per-run-parameters gets them from whoever runs it (the batch flow).
    assert not missing or "per-run-parameters" in deployment.get("tags", [])
    if "path" in params:
        load_workflow(ROOT / params["path"])  # the workflow file exists and is valid


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_schedules_parse(deployment):
    from prefect.client.schemas.schedules import CronSchedule

    for schedule in deployment.get("schedules", []):
        CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone", "UTC"))


def test_every_sample_workflow_is_deployed():
    deployed = {d["parameters"]["path"] for d in DEPLOYMENTS if "path" in d.get("parameters", {})}
    samples = {f"deployments/workflows/{p.name}" for p in (ROOT / "deployments" / "workflows").glob("*.yaml")}
    assert samples <= deployed, samples - deployed


def test_every_procedure_flow_is_deployed():
    """Each maintenance, cache and health flow has a deployment (issue: each procedure deployable)."""
    from prefect import Flow

    import flows.health.flow
    import flows.maintenance.audit
    import flows.maintenance.backup
    import flows.maintenance.cache
    import flows.maintenance.housekeeping
    import flows.maintenance.init
    import flows.maintenance.migrate
    import flows.maintenance.verify
    import flows.release.flow
    import flows.release.rollback

    modules = [
        flows.health.flow,
        flows.maintenance.audit,
        flows.maintenance.backup,
        flows.maintenance.cache,
        flows.maintenance.housekeeping,
        flows.maintenance.init,
        flows.maintenance.migrate,
        flows.maintenance.verify,
        flows.release.flow,
        flows.release.rollback,
    ]
    defined = {
        f"{module.__name__.replace('.', '/')}.py:{name}"
        for module in modules
        for name, value in vars(module).items()
        if isinstance(value, Flow) and value.__module__ == module.__name__
    }
    deployed = {d["entrypoint"] for d in DEPLOYMENTS}
    assert defined <= deployed, defined - deployed
