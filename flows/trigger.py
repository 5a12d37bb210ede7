"""`opsflow trigger DEPLOYMENT`: start a deployment run (e.g. from CI), follow it, exit by its state.

Exit codes (flows/errors.py): 0 Completed; 1 Failed, Crashed, Cancelled or --timeout reached;
3 unknown deployment, bad --param, a parameter the flow does not take or a secret given in clear
(`refuse_clear_secrets`); 4 Prefect API not
reachable; 5 the API refused the request. The pure parts come first and import no Prefect; the
client part does what `prefect deployment run --watch` does (same parameter check, same
`create_flow_run_from_deployment`), but polls the run so progress lines are opsflow's.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import timedelta
from typing import Annotated, Any

import typer

from flows.cli_options import Json, Quiet, Verbose, duration_option
from flows.console import LOG_DATEFMT, Console, escape_controls
from flows.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    ConnectionFailure,
    OpsflowError,
    ValidationError,
)
from flows.prefect_api import CONNECT_SECONDS, api_errors, need_server
from flows.workflow.units import format_duration

POLL_SECONDS = 1.0
LOG_WINDOW = timedelta(seconds=30)  # log lines may reach the API late: re-read this far back
FINAL = {"COMPLETED": EXIT_OK, "FAILED": EXIT_FAILURE, "CRASHED": EXIT_FAILURE, "CANCELLED": EXIT_FAILURE}


def parse_params(items: list[str], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """`key=value` items: a value is JSON when it parses (`4`, `true`, `["a"]`), else the text.

    Given the deployment's parameter schema, a key it does not declare is an error, and a
    string parameter (`str`, `str | None`) keeps the text as written (`version=1.10` stays "1.10").
    """
    props = None if schema is None else schema.get("properties") or {}
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not (key := key.strip()):
            # the item is not shown: it may be a secret given without its name
            raise ValidationError("--param: expected key=value, e.g. workers=4 (the item is not shown)")
        try:
            params[key] = json.loads(text)
        except ValueError:
            params[key] = text
        if props is not None and params[key] is not None and _text_only(props.get(key) or {}):
            params[key] = text
    if props is not None and (unknown := sorted(set(params) - set(props))):
        takes = ", ".join(sorted(props)) or "no parameters"
        raise ValidationError(f"the deployment has no parameter {', '.join(unknown)} (it takes: {takes})")
    return params


def refuse_clear_secrets(
    flow_name: str, schema: dict[str, Any], params: dict[str, Any], defaults: dict
) -> None:
    """Secrets in clear are refused before the run exists: the Prefect API would keep them in the
    run's parameters, readable in the UI. A secret is a parameter typed SecretStr, named like one
    (`api_token`), a workflow's secret parameter (`run-workflow`), or a URL with a password;
    references (`env:NAME`, `block:NAME`) are what to give instead. A parameter that takes a
    name or a secret (`notify`: a channel or a URL) refuses only URLs."""
    from flows.secrets import REFERENCE_HINT, clear_secret_paths, is_secret_name, reference

    typed, or_name = set(), set()
    for key, prop in (schema.get("properties") or {}).items():
        kinds = [prop, *prop.get("anyOf", [])]
        if any(k.get("format") == "password" for k in kinds):
            plain = any(k.get("type") == "string" and k.get("format") != "password" for k in kinds)
            (or_name if plain else typed).add(key)
    workflow = _workflow_secrets(params, defaults) if flow_name == "run-workflow" else frozenset()
    found = clear_secret_paths(
        {k: v for k, v in params.items() if k not in or_name},
        lambda name: name in typed or name in workflow or is_secret_name(name),
    )
    found += [
        k
        for k in or_name
        if isinstance(params.get(k), str) and "://" in params[k] and not reference(params[k])
    ]
    if found:
        raise ValidationError(
            f"--param {', '.join(sorted(found))}: a secret in clear would be kept by the Prefect API in the "
            f"run's parameters — pass {REFERENCE_HINT}, or set it in the worker's environment"
        )


def _workflow_secrets(params: dict[str, Any], defaults: dict[str, Any]) -> frozenset[str]:
    """The secret parameters of the workflow file the run will run, if it can be read here."""
    from pathlib import Path

    from flows.workflow.load import load_workflow
    from flows.workflow.params import secret_names

    path = params.get("path") or defaults.get("path")
    values = params.get("parameters") if isinstance(params.get("parameters"), dict) else {}
    if not isinstance(path, str):
        return frozenset()
    for candidate in (Path(path), Path(__file__).resolve().parent.parent / path):
        try:
            return secret_names(load_workflow(candidate), values)
        except OpsflowError:
            continue
    return frozenset()


def _text_only(prop: dict[str, Any]) -> bool:
    types = {prop.get("type")} | {choice.get("type") for choice in prop.get("anyOf", [])}
    return "string" in types and types <= {"string", "null", None}


def exit_code_for(state_type: str) -> int | None:
    """The exit code of a final state type (COMPLETED, FAILED...); None while the run goes on."""
    return FINAL.get(state_type.upper())


Param = typer.Option("--param", "-p", help="key=value, repeatable; the value is JSON if it parses.")
Wait = typer.Option("--wait", "-w", help="Follow the run; exit 0 Completed, 1 Failed/Crashed/Cancelled.")
Timeout = typer.Option(help="With --wait: stop waiting after 30s, 30m, 1h...; exit 1, the run goes on.")
Cancel = typer.Option("--cancel-on-timeout", help="With --timeout: cancel the run when the time is up.")
Logs = typer.Option("--logs", help="With --wait: print the run's log lines too.")


def trigger(
    deployment: Annotated[str, typer.Argument(help="FLOW/DEPLOYMENT, a unique name, or an id.")],
    params: Annotated[list[str] | None, Param] = None,
    wait: Annotated[bool, Wait] = False,
    timeout: Annotated[str | None, Timeout] = None,
    cancel_on_timeout: Annotated[bool, Cancel] = False,
    logs: Annotated[bool, Logs] = False,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Start a deployment run and print `ID NAME STATE URL`; with --wait, follow it to its end."""
    console = Console(verbose=verbose, quiet=quiet)
    try:
        parse_params(params or [])  # bad syntax fails before any API call
        limit = duration_option(timeout, "--timeout")
        if not wait and (timeout is not None or logs or cancel_on_timeout):
            raise ValidationError("--timeout, --cancel-on-timeout and --logs need --wait")
        if cancel_on_timeout and limit is None:
            raise ValidationError("--cancel-on-timeout needs --timeout")
        need_server(console, verbose, quiet)
        import anyio

        args = (console, deployment, params or [], wait, limit, cancel_on_timeout, logs)
        code, doc = anyio.run(_trigger, *args)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    line = f"{doc['id']} {doc['name']} {doc['state']} {doc['url']}"
    console.json(doc) if json_output else console.out(line)
    return code


async def _trigger(console, name, items, wait, limit, cancel_on_timeout, logs) -> tuple[int, dict]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.urls import url_for

    api, run, code = PREFECT_API_URL.value(), None, EXIT_OK
    with api_errors(api, lambda: f"flow run {run.name!r} ({run.id})" if run else None):
        async with get_client() as client:
            dep, dep_name = await find_deployment(client, name, api)
            params = parse_params(items, dep.parameter_openapi_schema or {})
            refuse_clear_secrets(
                dep_name.split("/")[0], dep.parameter_openapi_schema or {}, params, dep.parameters or {}
            )
            run = await client.create_flow_run_from_deployment(dep.id, parameters=params)
            console.name, url = run.name, url_for(run)
            console.info(f"created flow run {run.name!r} ({run.id}) of {dep_name}: {url}")
            if wait:
                code, run = await _follow(client, console, run, url, limit, cancel_on_timeout, logs)
    return code, {
        "id": str(run.id),
        "name": run.name,
        "deployment": dep_name,
        "state": run.state.name,
        "duration": round(run.estimated_run_time.total_seconds(), 3),  # run time so far
        "url": url,
        "message": run.state.message,
        "exit_code": code,
    }


async def find_deployment(client, name: str, api: str):
    """The deployment and its FLOW/DEPLOYMENT name, from either name form or an id."""
    from uuid import UUID

    import anyio
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.exceptions import ObjectNotFound

    dep = None
    with anyio.fail_after(CONNECT_SECONDS):
        try:
            if "/" in name:
                dep = await client.read_deployment_by_name(name)
            elif re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", name):
                dep = await client.read_deployment(UUID(name))
            else:
                by_name = DeploymentFilter(name=DeploymentFilterName(any_=[name]))
                found = await client.read_deployments(deployment_filter=by_name)
                if len(found) > 1:
                    raise ValidationError(f"{len(found)} deployments named {name!r}: say FLOW/{name}")
                dep = found[0] if found else None
        except ObjectNotFound:
            pass
    if dep is None and (problem := await client.api_healthcheck()) is not None:
        raise ConnectionFailure(f"no Prefect API at {api}: {problem}")  # a 404 from something else
    if dep is None:
        raise ValidationError(f"no deployment {name!r} at {api} (see `prefect deployment ls`)")
    flow = await client.read_flow(dep.flow_id)
    return dep, f"{flow.name}/{dep.name}"


async def _follow(client, console: Console, run, url, limit, cancel_on_timeout, logs):
    """Poll until the run is final or `limit` seconds pass: a line per state (and log line), in order."""
    import anyio

    started, seen, since = time.monotonic(), set(), run.created
    while True:
        run = await client.read_flow_run(run.id)  # before its states, so they include a final one
        final = exit_code_for(run.state.type.value)
        lines = []
        for state in await client.read_flow_run_states(run.id):
            if state.id not in seen:
                seen.add(state.id)
                note = f": {state.message}" if state.message and not state.is_final() else ""
                lines.append((state.timestamp, logging.INFO, state.name + note))
        if logs:
            since = await _new_logs(client, run, since, seen, lines)
            # The run's process sends its last lines after its final state, in batches: read on
            # until the engine's closing "Finished in state" line (a crashed run has none: 15 s).
            settled = time.monotonic() + 15
            while final is not None and not _closed(lines) and time.monotonic() < settled:
                await anyio.sleep(POLL_SECONDS)
                since = await _new_logs(client, run, since, seen, lines)
        for when, level, text in sorted(lines, key=lambda line: line[0]):
            if level >= console.threshold:
                stamp, name = when.astimezone().strftime(LOG_DATEFMT), logging.getLevelName(level)
                print(escape_controls(f"[{stamp}] [{name}] [{run.name}] {text}"), file=sys.stderr, flush=True)
        if final is not None:
            break
        waited = time.monotonic() - started
        if limit is not None and waited >= limit:
            return EXIT_FAILURE, await _timed_out(client, console, run, url, limit, cancel_on_timeout)
        await anyio.sleep(POLL_SECONDS if limit is None else min(POLL_SECONDS, limit - waited))
    ran, waited = run.estimated_run_time.total_seconds(), time.monotonic() - started
    took = f"in {format_duration(ran)} ({format_duration(waited)} waited)"
    if final == EXIT_OK:
        console.info(f"{run.state.name} {took}")
    else:
        console.error(f"{run.state.name} {took}: {run.state.message or 'no message'} (see {url})")
    return final, run


def _closed(lines: list[tuple[Any, int, str]]) -> bool:
    return any(text.startswith("Finished in state") for _, _, text in lines)


async def _timed_out(client, console: Console, run, url, limit: float, cancel: bool):
    from prefect.states import Cancelling

    what = f"flow run {run.name!r} ({run.id}) is still {run.state.name} after {format_duration(limit)}"
    if not cancel:
        console.error(f"{what}; it goes on (not cancelled): {url}")
        return run
    await client.set_flow_run_state(run.id, Cancelling(message="opsflow trigger: --timeout reached"))
    run = await client.read_flow_run(run.id)
    console.error(f"{what}: cancelling it (now {run.state.name}): {url}")
    return run


async def _new_logs(client, run, since, seen: set, lines: list):
    """Add the run's log lines not seen yet to `lines`; returns where the next read starts."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort

    of_run, after = LogFilterFlowRunId(any_=[run.id]), LogFilterTimestamp(after_=since)
    query = LogFilter(flow_run_id=of_run, timestamp=after)
    newest, batch, offset = since, [None] * 200, 0
    while len(batch) == 200:
        batch = await client.read_logs(query, limit=200, offset=offset, sort=LogSort.TIMESTAMP_ASC)
        offset += len(batch)
        for log in batch:
            newest = max(newest, log.timestamp)
            if log.id not in seen:
                seen.add(log.id)
                lines.append((log.timestamp, log.level, log.message))
    return max(since, newest - LOG_WINDOW)
