"""Batch file processing as a Prefect flow: chunked tasks, per-file retries, fallbacks, DLQ.

Speed comes from chunking: one task per file costs ~30 ms of Prefect bookkeeping, so files
go through in chunk tasks and only the (few) files that fail get tasks of their own, where
Prefect's retries (with explicitly jittered delays) and the fallback chain take over. Each
file's result is committed to the records database as soon as it is done, so a run killed
with SIGKILL resumes with exactly the files that were not finished.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.errors import OpsflowError, ValidationError
from flows.files.discover import InputFile, count_inputs, iter_inputs
from flows.files.processors import Processor, parse_processor
from flows.files.report import advance, announce_total, notify_completion, now_iso, write_reports
from flows.files.work import FileOutcome, attempt, fingerprint, output_path
from flows.records import files as store
from flows.records.db import session
from flows.workflow.plan import retry_delays
from flows.workflow.spec import Retry

MAX_CHUNK = 200
THREADS = 32


@functools.lru_cache(maxsize=32)
def processor_for(spec: str) -> Processor:
    return parse_processor(spec)


def chunk_size_for(total: int, workers: int) -> int:
    """Enough chunks to keep every worker busy (8 each), few enough to keep Prefect's cost low."""
    return max(1, min(MAX_CHUNK, math.ceil(total / (workers * 8))))


def options_key(processor: str, fallbacks: list[str], output: str | None) -> str:
    """The options that shape a file's output, as part of its content hash."""
    return json.dumps({"output": bool(output)}, sort_keys=True)


@dataclass
class ChunkResult:
    processed: int = 0
    skipped: int = 0
    processing_time: float = 0.0
    failed: list[tuple[str, str, str, str]] = field(default_factory=list)  # path, root, fingerprint, error


@task(name="process-chunk", cache_policy=NO_CACHE, persist_result=False)
def process_chunk(
    job_id: str,
    files: list[tuple[str, str]],
    processor: str,
    output: str | None,
    timeout: float | None,
    options: str,
    force: bool,
) -> ChunkResult:
    """Process files one after another; commit each result as soon as it exists."""
    logger = get_run_logger()
    proc = processor_for(processor)
    output_dir = Path(output) if output else None
    inputs = [InputFile(Path(p), Path(r)) for p, r in files]
    prints = {}
    result = ChunkResult()
    for item in inputs:
        try:
            prints[item.path] = fingerprint(item.path, proc.identity, options)
        except OSError as exc:
            result.failed.append((str(item.path), str(item.root), "", f"cannot read: {exc.strerror}"))
    with session() as db:
        done = set() if force else store.completed_fingerprints(db, prints.values())
    skipped_rows = []
    with session() as db:
        for item in inputs:
            if item.path not in prints:
                continue
            print_ = prints[item.path]
            target = output_path(item, proc, output_dir)
            if print_ in done and (target is None or target.exists()):
                skipped_rows.append(FileOutcome(str(item.path), print_, "skipped", attempts=0).record(job_id))
                result.skipped += 1
                advance()
                continue
            outcome = attempt(item, proc, output_dir=output_dir, timeout=timeout, print_=print_)
            result.processing_time += outcome.duration
            if outcome.status == "completed":
                store.record_results(db, [outcome.record(job_id)])
                db.commit()  # each file as soon as it is done: a killed run redoes only unfinished ones
                result.processed += 1
                advance()
            else:
                logger.warning(f"{item.path.name}: {outcome.error} (will retry)")
                result.failed.append((str(item.path), str(item.root), print_, outcome.error or ""))
        if skipped_rows:
            store.record_results(db, skipped_rows)
    return result


class StillFailing(Exception):
    """Raised inside a retry task so Prefect schedules the next retry."""


@task(name="retry-file", cache_policy=NO_CACHE, persist_result=False)
def retry_file(
    job_id: str,
    path: str,
    root: str,
    print_: str,
    processor: str,
    output: str | None,
    timeout: float | None,
    earlier_attempts: int = 0,
) -> dict[str, Any]:
    """One more attempt at one file; raising makes Prefect schedule the next retry."""
    from prefect.runtime import task_run

    item = InputFile(Path(path), Path(root))
    outcome = attempt(
        item,
        processor_for(processor),
        output_dir=Path(output) if output else None,
        timeout=timeout,
        print_=print_,
        attempts=earlier_attempts + (task_run.run_count or 1),
    )
    if outcome.status != "completed":
        raise StillFailing(outcome.error)
    with session() as db:
        store.record_results(db, [outcome.record(job_id)])
    return {"attempts": outcome.attempts, "duration": outcome.duration}


def _chunks(inputs: list[str], size: int) -> Iterator[list[tuple[str, str]]]:
    stream = ((str(f.path), str(f.root)) for f in iter_inputs(inputs))
    while chunk := list(itertools.islice(stream, size)):
        yield chunk


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
    notify: str | None = None,
    fail_fast: bool = False,
    deployment: str = "files-chunk/files-chunk",
) -> State:
    """Process every file of `inputs` with `processor` (see `python -m flows.batch files run --help`).

    `notify` is an apprise URL (e.g. `json://host:port/path`) that receives the summary at the
    end; a receiver that is down only produces a warning."""
    try:
        return _process(**locals())
    except OpsflowError as err:
        get_run_logger().error(str(err))
        return Failed(message=str(err), data=err)


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
    notify: str | None,
    fail_fast: bool,
    deployment: str,
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
    total = count_inputs(inputs)
    if total == 0:
        raise ValidationError(f"no input files in {', '.join(inputs)}")
    announce_total(total)
    size = chunk_size or chunk_size_for(total, workers)
    options = options_key(processor, fallbacks, output)
    if output:
        _remove_stale_temporaries(Path(output))
    started = time.monotonic()
    with session() as db:
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
        )
        job_id = job.id
    logger.info(f"job {job_id[:8]}: {total} files, chunks of {size}, {workers} worker(s)")

    counts = {"processed": 0, "skipped": 0, "retried": 0, "fallback": 0, "dead_lettered": 0}
    timing = {"processing_time": 0.0}
    started_at = now_iso()
    failed: list[tuple[str, str, str, str]] = []
    pending: set[PrefectFuture] = set()
    if mode == "queue":
        from flows.files.queue import run_on_workers

        queued, failed, processing = run_on_workers(
            _chunks(inputs, size),
            job_id=job_id,
            inputs=inputs,
            deployment=deployment,
            parameters={
                "processor": processor,
                "output": output,
                "timeout": timeout,
                "options": options,
                "force": force,
            },
        )
        counts.update(queued)
        timing["processing_time"] += processing
        advance(counts["processed"] + counts["skipped"])
    for chunk in _chunks(inputs, size) if mode != "queue" else ():
        if len(pending) >= workers * 2:  # bounded: the file list is streamed, never held whole
            done = next(as_completed(list(pending)))
            pending.discard(done)
            _absorb(done, counts, failed, timing)
        if fail_fast and failed:
            break
        pending.add(process_chunk.submit(job_id, chunk, processor, output, timeout, options, force))
    for done in as_completed(list(pending)):
        _absorb(done, counts, failed, timing)

    if failed and fail_fast:
        counts["dead_lettered"] = 0
        logger.error(
            f"--fail-fast: stopped after {len(failed)} failed file(s); first: {failed[0][0]}: {failed[0][3]}"
        )
        counts["not_started"] = total - counts["processed"] - counts["skipped"] - len(failed)
        counts["failed"] = len(failed)
    elif failed:
        _recover(
            job_id, failed, processor, fallbacks, output, timeout, retries, retry_delay, max_delay, counts
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


def _remove_stale_temporaries(output: Path) -> None:
    """Temporary outputs left by a killed run (never renamed into place) are removed, so the
    output tree holds only finished files. One batch per output directory at a time."""
    if not output.is_dir():
        return
    for leftover in output.rglob(".opsflow-*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _absorb(future: PrefectFuture, counts: dict[str, int], failed: list, timing: dict[str, float]) -> None:
    future.wait()
    result: ChunkResult = future.result()
    timing["processing_time"] += result.processing_time
    counts["processed"] += result.processed
    counts["skipped"] += result.skipped
    failed.extend(result.failed)


def _recover(
    job_id: str,
    failed: list[tuple[str, str, str, str]],
    processor: str,
    fallbacks: list[str],
    output: str | None,
    timeout: float | None,
    retries: int,
    retry_delay: float,
    max_delay: float,
    counts: dict[str, int],
) -> None:
    """Retry each failed file (Prefect retries, jittered backoff), then each fallback in order,
    then the dead-letter queue."""
    logger = get_run_logger()
    policy = Retry(
        attempts=retries + 1, delay=retry_delay, backoff="exponential", jitter=0.25, max_delay=max_delay
    )
    remaining = {path: (root, print_, error) for path, root, print_, error in failed}
    tried: dict[str, list[str]] = {path: [processor] for path in remaining}
    chain = [(processor, retries), *[(spec, retries) for spec in fallbacks]]
    for index, (spec, tries) in enumerate(chain):
        if not remaining:
            break
        delays = retry_delays(policy)
        if index == 0:
            counts["retried"] += len(remaining)
            if tries == 0:
                continue
            options = retry_file.with_options(
                retries=len(delays) - 1 if delays else 0, retry_delay_seconds=delays[1:] or 0
            )
            # the chunk already made the first attempt: the first retry waits delays[0]
            time.sleep(delays[0] if delays else 0)
        else:
            options = retry_file.with_options(retries=len(delays), retry_delay_seconds=delays or 0)
            for path in remaining:
                tried[path].append(spec)
        futures = {
            options.with_options(
                task_run_name=f"{'retry' if index == 0 else 'fallback'}: {Path(path).name}"
            ).submit(job_id, path, root, print_, spec, output, timeout, 1 if index == 0 else 0): path
            for path, (root, print_, _) in remaining.items()
        }
        for future in as_completed(list(futures)):
            future.wait()
            path = futures[future]
            state = future.state
            if state.is_completed():
                remaining.pop(path)
                advance()
                if index > 0:
                    counts["fallback"] += 1
                counts["processed"] += 1
            else:
                error = state.result(raise_on_failure=False)
                root, print_, _ = remaining[path]
                remaining[path] = (root, print_, str(error))
    for path, (root, print_, error) in remaining.items():
        logger.error(f"{Path(path).name}: dead-lettered after {len(tried[path])} processor(s): {error}")
        with session() as db:
            store.dead_letter(
                db,
                input_path=path,
                fingerprint=print_,
                job_id=job_id,
                error=error,
                attempts=(retries + 1) * len(tried[path]),
                processors=json.dumps(tried[path]),
                output_dir=output,
                options=json.dumps({"timeout": timeout, "root": root}),
            )
            store.record_results(
                db,
                [
                    FileOutcome(
                        path, print_, "dead_lettered", attempts=(retries + 1) * len(tried[path]), error=error
                    ).record(job_id)
                ],
            )
        counts["dead_lettered"] += 1
        advance()


@task(name="reprocess-dead-letter", cache_policy=NO_CACHE, persist_result=False)
def reprocess_item(item_id: int, processor: str | None, timeout: float | None) -> dict[str, Any]:
    """One more try at one dead-letter item: success removes it, failure counts against it."""
    with session() as db:
        item = store.get_dead_letter(db, item_id)
        if item is None:
            return {"id": item_id, "status": "missing"}
        tried = json.loads(item.processors)
        spec = processor or tried[0]
        path, output_dir = Path(item.input_path), item.output_dir
        batch_print, batch_job = item.fingerprint, item.job_id
        root = Path(json.loads(item.options or "{}").get("root") or path.parent)
    if not path.is_file():
        error = "the input file no longer exists"
        outcome = None
    else:
        proc = processor_for(spec)
        print_ = fingerprint(path, proc.identity, options_key(spec, [], output_dir))
        outcome = attempt(
            InputFile(path, root),
            proc,
            output_dir=Path(output_dir) if output_dir else None,
            timeout=timeout,
            print_=print_,
        )
        error = outcome.error or ""
    with session() as db:
        if outcome is not None and outcome.status == "completed":
            store.resolve_dead_letter(db, item_id)
            # The batch that gave up on this file now has it: its record says completed (under the
            # batch's own content hash), so re-running that batch skips the file.
            store.record_results(db, [{**outcome.record(batch_job), "fingerprint": batch_print}])
            return {"id": item_id, "status": "resolved", "processor": spec}
        store.dead_letter_failed_again(
            db, item_id, error, 1, json.dumps([*tried, spec] if spec not in tried else tried)
        )
    return {"id": item_id, "status": "failed", "error": error}


@flow(name="reprocess-dead-letters", task_runner=ThreadPoolTaskRunner(max_workers=4), persist_result=False)
def reprocess_dead_letters(
    ids: list[int] | None = None, processor: str | None = None, timeout: float | None = 300.0
) -> State:
    """Try the dead-letter queue's files again (all, or `ids`), with their processor or `processor`."""
    if processor is not None:
        try:
            processor_for(processor)
        except OpsflowError as err:
            return Failed(message=str(err), data=err)
    with session() as db:
        targets = ids or [item.id for item in store.list_dead_letters(db, limit=100_000)]
    results = [f.result() for f in [reprocess_item.submit(i, processor, timeout) for i in targets]]
    failed = [r for r in results if r["status"] != "resolved"]
    summary = {
        "items": len(results),
        "resolved": len(results) - len(failed),
        "failed": len(failed),
        "results": results,
    }
    if failed:
        return Failed(message=f"{len(failed)} item(s) failed again", data=summary)
    return Completed(message=f"{len(results)} item(s) resolved", data=summary)
