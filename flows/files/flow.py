"""Batch file processing as a Prefect flow: `process_files(inputs, processor, ...)`.

Chunks (chunks.py) do the work; failing files go through retries, fallbacks and the
dead-letter queue (recover.py); queue mode hands chunks to workers (queue.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError

from flows import children
from flows.errors import ConnectionFailure, DependencyError, OpsflowError, ValidationError
from flows.files import interrupted
from flows.files.chunks import (
    ChunkResult,
    after_failure,
    chunk_size_for,
    iter_chunks,
    options_key,
    process_chunk,
    processor_for,
)
from flows.files.discover import count_inputs
from flows.files.recover import recover
from flows.files.report import advance, announce_total, notify_completion, now_iso, write_reports
from flows.masking import Masker, environment_secrets, masked_error, masking
from flows.notify import target_urls
from flows.records import files as store
from flows.records.db import records_failure, session
from flows.records.liveness import this_process
from flows.secrets import refuse_plain_secrets, scrub_text

THREADS = 32
REAPER_WAIT_SECONDS = 30.0


@flow(
    name="process-files",
    flow_run_name="files-{name}",
    task_runner=ThreadPoolTaskRunner(max_workers=THREADS),
    persist_result=False,
)
def process_files(
    inputs: list[str],
    processor: str,
    output: str | None = None,
    mode: str = "parallel",
    workers: int = 2,
    retries: int = 2,
    retry_delay: float = 1.0,
    max_delay: float = 60.0,
    fallback: list[str] | None = None,
    force: bool = False,
    timeout: float | None = 300.0,
    chunk_size: int | None = None,
    name: str = "files",
    notify: str | SecretStr | None = None,  # str first: text in clear stays text, to be refused
    fail_fast: bool = False,
    deployment: str = "files-chunk/files-chunk",
    roots: list[str] | None = None,
) -> State:
    """Process every file of `inputs` with `processor` (see `python -m flows.batch files run --help`).

    `notify` receives the summary at the end (a receiver that is down only produces a warning):
    a channel name (`OPSFLOW_NOTIFY_<NAME>`, or the notification channels block), a reference
    (`env:NAME`, `block:NAME`) to an apprise URL, or the URL itself as a SecretStr, which
    Prefect stores obscured (`files run --notify URL` passes it so). A URL in clear is refused:
    the Prefect API would keep its credentials."""
    arguments = dict(locals())
    batch = arguments["batch"] = _Batch(name=name)
    with masking(Masker(environment_secrets())) as mask:
        try:
            _refuse_plain_credentials(notify, processor, fallback or [])
            urls = arguments["notify"] = target_urls(notify) if notify else []
            mask.add(urls)
            if notify and not urls:
                get_run_logger().warning(
                    f"notification channel {notify!r} has no URL: set OPSFLOW_NOTIFY_<NAME> or the channels block"
                )
            return _process(**arguments)
        except (ConnectionFailure, SQLAlchemyError) as exc:
            failure = masked_error(records_failure(exc), mask)
            if batch.job_id is not None:
                return _interrupted(failure, batch, arguments["notify"])
            get_run_logger().error(str(failure))
            return Failed(message=str(failure), data=failure)
        except OpsflowError as err:
            err = masked_error(err, mask)
            get_run_logger().error(str(err))
            return Failed(message=str(err), data=err)
        finally:
            if batch.job_id is not None:
                interrupted.forget(batch.job_id)


def _refuse_plain_credentials(notify: str | SecretStr | None, processor: str, fallbacks: list[str]) -> None:
    """Credentials that reached the flow run's parameters in clear: removed from the stored run,
    and the batch refused (a processor reads its credentials from its environment instead)."""
    plain = []
    if isinstance(notify, str) and "://" in notify:
        plain.append("notify")
    if scrub_text(processor) != processor:
        plain.append("processor")
    if any(scrub_text(f) != f for f in fallbacks):
        plain.append("fallback")
    refuse_plain_secrets(plain, where="")


@dataclass
class _Batch:
    """What the flow knows of its job, for the summary of a batch that lost its database."""

    name: str
    job_id: str | None = None
    total: int = 0
    started: float = 0.0
    started_at: str = ""
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "processed": 0,
            "skipped": 0,
            "retried": 0,
            "fallback": 0,
            "dead_lettered": 0,
        }
    )
    timing: dict[str, float] = field(default_factory=lambda: {"processing_time": 0.0})


def _process(
    inputs: list[str],
    processor: str,
    output: str | None,
    mode: str,
    workers: int,
    retries: int,
    retry_delay: float,
    max_delay: float,
    fallback: list[str] | None,
    force: bool,
    timeout: float | None,
    chunk_size: int | None,
    name: str,
    notify: list[str],
    fail_fast: bool,
    deployment: str,
    roots: list[str] | None,
    batch: _Batch,
) -> State:
    logger = get_run_logger()
    fallbacks = list(fallback or [])
    if mode not in ("sequential", "parallel", "queue"):
        raise ValidationError(f"--mode must be sequential, parallel or queue, not {mode!r}")
    for spec in [processor, *fallbacks]:
        if getattr(processor_for(spec), "uses_output", False) and not output:  # bad specs fail first
            raise ValidationError(
                f"processor `{spec}` writes {{output}}: give an output directory (--output)"
            )
    workers = 1 if mode == "sequential" else max(1, workers)
    exclude = [output] if output else []
    total = count_inputs(inputs, allowed_roots=roots, exclude=exclude)
    if total == 0:
        raise ValidationError(f"no input files in {', '.join(inputs)}")
    announce_total(total)
    size = chunk_size or chunk_size_for(total, workers)
    options = options_key(processor, fallbacks, output)
    then = after_failure(retries, fallbacks, fail_fast)  # what a failed file's line says comes next
    _await_killed_runs(logger)
    if output:
        _remove_stale_temporaries(Path(output))
    started = time.monotonic()
    with session() as db:
        interrupted.reconcile(db)  # jobs this host saw interrupted while the database was away
        job = store.start_job(
            db,
            name=name,
            processor=processor_for(processor).identity,
            fallbacks=json.dumps(fallbacks),
            inputs=json.dumps(inputs),
            output_dir=output,
            mode=mode,
            status="running",
            flow_run_id=str(current_flow_run.id) if current_flow_run.id else None,
            total=total,
            options=json.dumps({"retries": retries, "force": force, "timeout": timeout, "workers": workers}),
            **this_process(),
        )
        job_id = job.id
    logger.info(f"job {job_id[:8]}: {total} files, chunks of {size}, {workers} worker(s)")

    batch.job_id, batch.total, batch.started, batch.started_at = job_id, total, started, now_iso()
    counts, timing, started_at = batch.counts, batch.timing, batch.started_at
    failed: list[tuple[str, str, str, str]] = []
    lost: list[str] = []  # why chunks stopped: the records database failed under them
    pending: set[PrefectFuture] = set()
    if mode == "queue":
        from flows.files.queue import run_on_workers

        queued, failed, processing = run_on_workers(
            iter_chunks(inputs, size, roots, exclude),
            job_id=job_id,
            inputs=inputs,
            deployment=deployment,
            parameters={
                "processor": processor,
                "output": output,
                "timeout": timeout,
                "options": options,
                "force": force,
                "then": then,
                # only when confined: a chunk deployment made before roots existed still takes
                # unconfined batches, and refuses a confined one instead of running it unchecked
                **({"roots": roots} if roots else {}),
            },
        )
        counts.update(queued)
        timing["processing_time"] += processing
        advance(counts["processed"] + counts["skipped"])
    for chunk in iter_chunks(inputs, size, roots, exclude) if mode != "queue" else ():
        # At most `workers` chunks in flight: every submitted chunk runs at once (the task
        # runner has THREADS), so more would be more workers; the file list is streamed.
        if len(pending) >= workers:
            done = next(as_completed(list(pending)))
            pending.discard(done)
            _absorb(done, counts, failed, timing, lost)
        if (fail_fast and failed) or lost:
            break
        pending.add(
            process_chunk.submit(job_id, chunk, processor, output, timeout, options, force, then, roots)
        )
    for done in as_completed(list(pending)):
        _absorb(done, counts, failed, timing, lost)
    if lost:
        raise ConnectionFailure(lost[0])

    if failed and fail_fast:
        counts["dead_lettered"] = 0
        logger.error(
            f"--fail-fast: stopped after {len(failed)} failed file(s); first: {failed[0][0]}: {failed[0][3]}"
        )
        counts["not_started"] = total - counts["processed"] - counts["skipped"] - len(failed)
        counts["failed"] = len(failed)
    elif failed:
        recover(
            job_id,
            failed,
            processor,
            fallbacks,
            output,
            timeout,
            retries,
            retry_delay,
            max_delay,
            counts,
            roots,
        )
    duration = time.monotonic() - started
    status = "failed" if counts["dead_lettered"] or counts.get("failed") else "completed"
    with session() as db:
        store.finish_job(
            db, job_id, status, {k: v for k, v in counts.items() if k in store.JOB_COUNTERS}, duration
        )
    summary = {
        "job_id": job_id,
        "name": name,
        "status": status,
        "total": total,
        **counts,
        "duration": round(duration, 3),
        "processing_time": round(timing["processing_time"], 3),
        "started_at": started_at,
        "finished_at": now_iso(),
    }
    summary["reports"] = str(write_reports(summary))
    create_table_artifact(
        table=[{"metric": k, "value": v} for k, v in summary.items()],
        key="files-" + (re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "batch"),
        description=f"**{name}**: {counts['processed']} processed, {counts['skipped']} unchanged, "
        f"{counts['dead_lettered']} dead-lettered of {total} in {duration:.1f}s",
    )
    if notify:
        notify_completion(notify, summary, logger.warning)
    if counts.get("failed"):
        return Failed(message=f"stopped at the first failure (--fail-fast): {failed[0][0]}", data=summary)
    if counts["dead_lettered"]:
        return Failed(message=f"{counts['dead_lettered']} file(s) in the dead-letter queue", data=summary)
    return Completed(message=f"{counts['processed']} processed, {counts['skipped']} unchanged", data=summary)


def _await_killed_runs(logger: Any) -> None:
    """A batch killed a moment ago may still have processors running until its guardian has
    stopped them (children.py): starting now would process their files a second time, and
    remove the temporaries they are still writing."""
    reapers = children.reapers()
    if not reapers:
        return
    logger.warning("waiting for the processors of a killed run to be stopped")
    left = children.wait_for_reapers(REAPER_WAIT_SECONDS)
    if left:
        raise DependencyError(
            f"the commands of a killed opsflow run are still being stopped (process {left[0]}) — try again"
        )


def _remove_stale_temporaries(output: Path) -> None:
    """Temporary outputs left by a killed run (never renamed into place) are removed, so the
    output tree holds only finished files. One batch per output directory at a time."""
    if not output.is_dir():
        return
    for leftover in output.rglob(".opsflow-*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _absorb(
    future: PrefectFuture, counts: dict[str, int], failed: list, timing: dict[str, float], lost: list[str]
) -> None:
    future.wait()
    result: ChunkResult = future.result()
    timing["processing_time"] += result.processing_time
    counts["processed"] += result.processed
    counts["skipped"] += result.skipped
    failed.extend(result.failed)
    if result.lost:
        lost.append(result.lost)


def _interrupted(failure: OpsflowError, batch: _Batch, notify: list[str]) -> State:
    """The batch lost its records database: one error line, the job marked `interrupted` with
    what was committed (now, or by the next command that reaches the database), and a summary
    for `--json`; the command exits 4."""
    job_id = str(batch.job_id)
    marked = interrupted.record(job_id, failure.message, batch.counts)
    summary = {
        "job_id": job_id,
        "name": batch.name,
        "status": "interrupted",
        "error": str(failure),
        "total": batch.total,
        **batch.counts,
        "duration": round(time.monotonic() - batch.started, 3),
        "processing_time": round(batch.timing["processing_time"], 3),
        "started_at": batch.started_at,
        "finished_at": now_iso(),
    }
    with contextlib.suppress(OSError):
        summary["reports"] = str(write_reports(summary))
    later = "" if marked else "; `files history` records it once the database answers again"
    get_run_logger().error(
        f"{failure} — job {job_id[:8]} interrupted after {batch.counts['processed']} of {batch.total} "
        f"file(s) committed{later}"
    )
    if notify:
        notify_completion(notify, summary, get_run_logger().warning)
    return Failed(message=f"job {job_id[:8]} interrupted: its records database failed", data=summary)
