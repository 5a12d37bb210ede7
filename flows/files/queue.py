"""`--mode queue`: chunks become runs of a deployment, drained by any number of Prefect workers.

No queue daemon of our own: Prefect's work pool is the queue, `prefect worker start --pool P`
on any machine is a consumer, and the records database (PostgreSQL for several machines) is
where the chunks' results meet. Deploy the chunk flow once (`prefect.yaml`: `files-chunk`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import FlowRun

from flows.errors import ConnectionFailure, ValidationError
from flows.files.work import FileOutcome
from flows.records import files as store
from flows.records.db import session

DEFAULT_DEPLOYMENT = "files-chunk/files-chunk"
PICKUP_SECONDS = 300.0  # no worker took a chunk in this long: say so instead of waiting for ever
POLL_SECONDS = 1.0


@flow(name="files-chunk", flow_run_name="chunk-{job_id}", persist_result=False)
def process_chunk_flow(
    job_id: str,
    files: list[tuple[str, str]],
    processor: str,
    output: str | None,
    timeout: float | None,
    options: str,
    force: bool,
    then: str = "",
    roots: list[str] | None = None,
) -> dict[str, int]:
    """One chunk of a queue-mode batch, run by whichever worker takes it. Failed files are
    recorded as `failed`; the batch's own flow retries them and runs the fallbacks."""
    from flows.masking import Masker, environment_secrets, masking

    with masking(Masker(environment_secrets())):  # the worker's secrets out of its errors and logs
        return _chunk(job_id, files, processor, output, timeout, options, force, then, roots)


def _chunk(
    job_id: str,
    files: list[tuple[str, str]],
    processor: str,
    output: str | None,
    timeout: float | None,
    options: str,
    force: bool,
    then: str = "",
    roots: list[str] | None = None,
) -> dict[str, int]:
    from flows.files import interrupted
    from flows.files.chunks import process_chunk

    result = process_chunk.fn(job_id, files, processor, output, timeout, options, force, then, roots)
    interrupted.forget(job_id)  # this worker may take the job's next chunk when the database is back
    if result.lost:
        raise ConnectionFailure(result.lost)  # the batch's own run redoes what this chunk did not record
    if result.failed:
        rows = [
            FileOutcome(path, print_, "failed", error=error).record(job_id)
            for path, _, print_, error in result.failed
        ]
        with session() as db:
            store.record_results(db, rows)
        get_run_logger().warning(f"{len(result.failed)} file(s) failed" + (f" ({then})" if then else ""))
    return {"processed": result.processed, "skipped": result.skipped, "failed": len(result.failed)}


def root_for(path: str, inputs: list[str]) -> str:
    """The input directory a file was found under (its parent for single files and globs)."""
    candidates = [Path(i).resolve() for i in inputs if Path(i).is_dir()]
    found = [c for c in candidates if c in Path(path).parents]
    return str(max(found, key=lambda c: len(c.parts))) if found else str(Path(path).parent)


def run_on_workers(
    chunks: Any,
    *,
    job_id: str,
    inputs: list[str],
    deployment: str,
    parameters: dict[str, Any],
) -> tuple[dict[str, int], list[tuple[str, str, str, str]], float]:
    """Submit every chunk as a deployment run, wait for all, read the results from the records.

    Returns (counts, failed files as (path, root, fingerprint, error), processing time).
    """
    from prefect import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    submitted: dict[str, list[tuple[str, str]]] = {}
    try:
        for chunk in chunks:
            run: FlowRun = run_deployment(
                deployment,
                parameters={**parameters, "job_id": job_id, "files": chunk},
                timeout=0,
                as_subflow=True,
            )
            submitted[str(run.id)] = chunk
    except Exception as exc:  # an unknown deployment is the usual cause
        raise ValidationError(
            f"cannot submit chunks to deployment {deployment!r} ({exc}) — deploy it first: prefect deploy --name files-chunk"
        ) from None
    logger.info(f"{len(submitted)} chunk(s) submitted to {deployment}; waiting for workers")
    states = _wait_for(submitted, get_client)
    with session() as db:
        rows = store.job_results(db, job_id)
    counts = {"processed": 0, "skipped": 0}
    failed, seen, processing = [], set(), 0.0
    for row in rows:
        seen.add(row.input_path)
        if row.status == "completed":
            counts["processed"] += 1
            processing += row.duration or 0.0
        elif row.status == "skipped":
            counts["skipped"] += 1
        elif row.status == "failed":
            failed.append(
                (row.input_path, root_for(row.input_path, inputs), row.fingerprint, row.error or "")
            )
    for run_id, chunk in submitted.items():
        if states[run_id] != "Completed":
            # The chunk's run crashed or was cancelled: what it did not record is retried here.
            for path, root in chunk:
                if path not in seen:
                    failed.append((path, root, "", f"its chunk run ended {states[run_id]}"))
    return counts, failed, processing


def _wait_for(submitted: dict[str, Any], get_client: Any) -> dict[str, str]:
    states: dict[str, str] = {}
    started = time.monotonic()
    with get_client(sync_client=True) as client:
        while len(states) < len(submitted):
            picked_up = False
            for run_id in submitted:
                if run_id in states:
                    continue
                run = client.read_flow_run(run_id)
                if run.state and run.state.is_final():
                    states[run_id] = run.state.name
                elif run.state and not (run.state.is_scheduled() or run.state.is_pending()):
                    picked_up = True
            if not states and not picked_up and time.monotonic() - started > PICKUP_SECONDS:
                raise ConnectionFailure(
                    f"no worker took a chunk in {PICKUP_SECONDS:.0f}s — start one: "
                    "prefect worker start --pool opsflow-process"
                )
            if len(states) < len(submitted):
                time.sleep(POLL_SECONDS)
    return states
