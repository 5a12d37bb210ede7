"""Chunks of a batch: the task that processes a list of files one after another.

One task per file costs ~30 ms of Prefect bookkeeping, so files go through in chunk tasks;
each file's result is committed to the records database as soon as it is done, so a run
killed with SIGKILL resumes with exactly the files that were not finished.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import SQLAlchemyError

from flows.errors import ConnectionFailure
from flows.files import interrupted
from flows.files.discover import InputFile, iter_inputs
from flows.files.processors import Processor, parse_processor
from flows.files.report import advance
from flows.files.work import FileOutcome, attempt, fingerprint, output_exists, output_path
from flows.records import files as store
from flows.records.db import records_failure, session

MAX_CHUNK = 200


@functools.lru_cache(maxsize=32)
def processor_for(spec: str) -> Processor:
    return parse_processor(spec)


def after_failure(retries: int, fallbacks: list[str], fail_fast: bool) -> str:
    """What happens next to a file that failed its first attempt, as a log line says it."""
    if fail_fast:
        return "--fail-fast: the batch stops"
    if retries > 0:
        return f"will retry, up to {retries} time(s)"
    if fallbacks:
        return f"no retries: the fallback processor(s) try it next ({len(fallbacks)})"
    return "no retries, no fallback: it goes to the dead-letter queue"


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
    lost: str | None = None  # the records database failed: why (the chunk stopped there)


@task(name="process-chunk", cache_policy=NO_CACHE, persist_result=False)
def process_chunk(
    job_id: str,
    files: list[tuple[str, str]],
    processor: str,
    output: str | None,
    timeout: float | None,
    options: str,
    force: bool,
    then: str = "",
    roots: list[str] | None = None,
) -> ChunkResult:
    """Process files one after another; commit each result as soon as it exists. With `roots`,
    each file must still be inside them when it is opened (discovery was earlier).

    When the records database fails, the chunk stops and says why in `lost` (no exception:
    one failure of the database is one line for the batch, not a traceback per chunk)."""
    result = ChunkResult()
    try:
        _process_files(result, job_id, files, processor, output, timeout, options, force, then, roots)
    except (ConnectionFailure, SQLAlchemyError) as exc:
        failure = records_failure(exc)
        interrupted.stop(job_id, failure.message)
        result.lost = failure.message
        result.skipped = 0  # their rows are written at the end of the chunk: none were
    return result


def _process_files(
    result: ChunkResult,
    job_id: str,
    files: list[tuple[str, str]],
    processor: str,
    output: str | None,
    timeout: float | None,
    options: str,
    force: bool,
    then: str,
    roots: list[str] | None = None,
) -> None:
    logger = get_run_logger()
    confined = resolved_roots(roots)
    proc = processor_for(processor)
    output_dir = Path(output) if output else None
    inputs = [InputFile(Path(p), Path(r)) for p, r in files]
    prints = {}
    for item in inputs:
        try:
            prints[item.path] = fingerprint(item.path, proc.identity, options, confined)
        except OSError as exc:
            result.failed.append((str(item.path), str(item.root), "", f"cannot read: {exc.strerror}"))
    with session() as db:
        done = set() if force else store.completed_fingerprints(db, prints.values())
    skipped_rows = []
    with session() as db:
        for item in inputs:
            if interrupted.stopped(job_id):  # another chunk lost the records database
                break
            if item.path not in prints:
                continue
            print_ = prints[item.path]
            target = output_path(item, proc, output_dir)
            if print_ in done and (target is None or output_exists(target)):
                skipped_rows.append(FileOutcome(str(item.path), print_, "skipped", attempts=0).record(job_id))
                result.skipped += 1
                advance()
                continue
            outcome = attempt(
                item, proc, output_dir=output_dir, timeout=timeout, print_=print_, roots=confined
            )
            result.processing_time += outcome.duration
            if outcome.status == "completed":
                store.record_results(db, [outcome.record(job_id)])
                db.commit()  # each file as soon as it is done: a killed run redoes only unfinished ones
                result.processed += 1
                advance()
            else:
                logger.warning(f"{item.path.name}: {outcome.error}" + (f" ({then})" if then else ""))
                result.failed.append((str(item.path), str(item.root), print_, outcome.error or ""))
        if skipped_rows:
            store.record_results(db, skipped_rows)


def resolved_roots(roots: list[str] | None) -> list[Path] | None:
    """The batch's roots as `open_input` compares them (None: not confined)."""
    return [Path(r).resolve() for r in roots] if roots else None


def iter_chunks(
    inputs: list[str], size: int, roots: list[str] | None = None, exclude: list[str] | None = None
) -> Iterator[list[tuple[str, str]]]:
    files = iter_inputs(inputs, allowed_roots=roots, exclude=exclude or [])
    stream = ((str(f.path), str(f.root)) for f in files)
    while chunk := list(itertools.islice(stream, size)):
        yield chunk
