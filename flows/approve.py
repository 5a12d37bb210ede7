"""`opsflow approve [RUN] [--reject --reason ...]`: decide on a run waiting for approval.

The terminal twin of the form the Prefect UI shows on a paused run (flows/approval.py): it
resumes the run with the same input. Without RUN it lists the runs waiting for a decision.
Exit codes: 0 decided (or listed); 3 no such run, the run is not waiting, --reject without
--reason, or the approval window closed; 4 Prefect API not reachable; 5 refused.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from flows.cli_options import Json, Quiet, Verbose
from flows.console import Console
from flows.errors import EXIT_OK, OpsflowError, ValidationError

UUID_RE = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")

Run = Annotated[
    str | None,
    typer.Argument(help="Flow run id or name; without it, list the runs waiting.", show_default=False),
]
Reject = Annotated[bool, typer.Option("--reject", help="Reject instead of approve (needs --reason).")]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why; kept with the run and notified.")]
As = Annotated[str | None, typer.Option("--as", help="Who decides (default: your login name).")]


def approve(
    run: Run = None,
    reject: Reject = False,
    reason: Reason = "",
    approver: As = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Approve (or --reject) a run paused for manual approval; without RUN, list those waiting."""
    from flows.approval import decision_input

    console = Console(verbose=verbose, quiet=quiet)
    try:
        if run is None and (reject or reason or approver):
            raise ValidationError("--reject, --reason and --as need the RUN to decide on")
        if reject and not reason.strip():
            raise ValidationError('--reject needs --reason "..." (it is recorded and notified)')
        from flows.prefect_api import need_server

        api = need_server(console, verbose, quiet, what="approve")
        import anyio

        if run is None:
            doc = anyio.run(_waiting, api)
        else:
            decision = decision_input(reject=reject, reason=reason.strip(), approver=approver)
            doc = anyio.run(_decide, api, run, decision)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    if json_output:
        console.json(doc)
    elif run is None:
        _print_waiting(console, doc)
    else:
        verb = "approved" if doc["approve"] else "rejected"
        why = f": {doc['reason']}" if doc["reason"] else ""
        console.out(f"{verb} flow run {doc['name']!r} ({doc['id']}) as {doc['approver']}{why} {doc['url']}")
    return EXIT_OK


def _print_waiting(console: Console, doc: list[dict[str, Any]]) -> None:
    if not doc:
        console.info("no run is waiting for approval")
        return
    for item in doc:
        console.out(f"{item['id']}  {item['flow']}/{item['name']}  paused {item['since']}  {item['url']}")


async def _find_run(client, run: str):
    from uuid import UUID

    import anyio
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.exceptions import ObjectNotFound

    from flows.prefect_api import CONNECT_SECONDS

    with anyio.fail_after(CONNECT_SECONDS):
        if UUID_RE.fullmatch(run):
            try:
                return await client.read_flow_run(UUID(run))
            except ObjectNotFound:
                raise ValidationError(f"no flow run {run}") from None
        found = await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run])))
    if len(found) != 1:
        raise ValidationError(
            f"{len(found) or 'no'} flow runs named {run!r}" + (": give its id" if found else "")
        )
    return found[0]


async def _decide(api: str, run_name: str, decision: dict[str, Any]) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.utilities.urls import url_for

    from flows.prefect_api import api_errors

    with api_errors(api):
        async with get_client() as client:
            run = await _find_run(client, run_name)
            what = f"flow run {run.name!r} ({run.id})"
            if not run.state or not run.state.is_paused():
                state = run.state.name if run.state else "without a state"
                raise ValidationError(f"{what} is {state}, not waiting for approval")
            if run.state.state_details.run_input_keyset is None:
                raise ValidationError(
                    f"{what} is paused but asks for no decision: resume it with `prefect flow-run resume`"
                )
            response = await client.resume_flow_run(run.id, run_input=decision)
    if response.status == SetStateStatus.REJECT:
        reason = response.details.reason if response.details else "refused"
        if response.state is not None and response.state.is_failed():
            reason = "its approval window closed (timed out)"
        raise ValidationError(f"cannot resume {what}: {reason}")
    return {"id": str(run.id), "name": run.name, "url": url_for(run), **decision}


async def _waiting(api: str) -> list[dict[str, Any]]:
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.utilities.urls import url_for

    from flows.prefect_api import CONNECT_SECONDS, api_errors

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with api_errors(api):
        async with get_client() as client:
            with anyio.fail_after(CONNECT_SECONDS):
                runs = await client.read_flow_runs(flow_run_filter=paused)
            flows = {f.id: f.name for f in await client.read_flows()} if runs else {}
    return [
        {
            "id": str(r.id),
            "name": r.name,
            "flow": flows.get(r.flow_id, "?"),
            "since": r.state.timestamp.isoformat(timespec="seconds"),
            "timeout_at": (r.state.state_details.pause_timeout or None)
            and r.state.state_details.pause_timeout.isoformat(timespec="seconds"),
            "url": url_for(r),
        }
        for r in runs
        if r.state.state_details.run_input_keyset is not None
    ]
