"""After the chunks: per-file retries, the fallback chain, the dead-letter queue and its
reprocessing. Failing files get task runs of their own, so Prefect's retries (with explicitly
jittered delays) apply to exactly them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from sqlalchemy.exc import SQLAlchemyError

from flows.backoff import backoff_delays
from flows.errors import ConnectionFailure, OpsflowError
from flows.files.chunks import options_key, processor_for, resolved_roots
from flows.files.discover import InputFile
from flows.files.report import advance
from flows.files.work import FileOutcome, attempt, fingerprint
from flows.masking import Masker, environment_secrets, masking
from flows.records import files as store
from flows.records.db import records_failure, session
from flows.secrets import refuse_plain_secrets, scrub_text


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
    roots: list[str] | None = None,
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
        roots=resolved_roots(roots),
    )
    if outcome.status != "completed":
        raise StillFailing(outcome.error)
    try:
        with session() as db:
            store.record_results(db, [outcome.record(job_id)])
    except (ConnectionFailure, SQLAlchemyError) as exc:
        # Not raised: Prefect would retry the file (processing it again) and log a traceback.
        return {"lost": records_failure(exc).message}
    return {"attempts": outcome.attempts, "duration": outcome.duration}


def recover(
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
    roots: list[str] | None = None,
) -> None:
    """Retry each failed file (Prefect retries, jittered backoff), then each fallback in order,
    then the dead-letter queue."""
    logger = get_run_logger()
    remaining = {path: (root, print_, error) for path, root, print_, error in failed}
    tried: dict[str, list[str]] = {path: [processor] for path in remaining}
    chain = [(processor, retries), *[(spec, retries) for spec in fallbacks]]
    for index, (spec, tries) in enumerate(chain):
        if not remaining:
            break
        delays = backoff_delays(retries + 1, retry_delay, "exponential", jitter=0.25, max_delay=max_delay)
        if index == 0:
            if tries == 0:
                continue
            counts["retried"] += len(remaining)
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
            ).submit(job_id, path, root, print_, spec, output, timeout, 1 if index == 0 else 0, roots): path
            for path, (root, print_, _) in remaining.items()
        }
        for future in as_completed(list(futures)):
            future.wait()
            path = futures[future]
            state = future.state
            if state.is_completed():
                lost = (state.result(raise_on_failure=False) or {}).get("lost")
                if lost:
                    raise ConnectionFailure(lost)
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
                options=json.dumps({"timeout": timeout, "root": root, "roots": roots}),
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
        stored = json.loads(item.options or "{}")
        root = Path(stored.get("root") or path.parent)
        confined = resolved_roots(stored.get("roots"))  # the batch's roots still hold
    if not path.is_file():
        error = "the input file no longer exists"
        outcome = None
    else:
        proc = processor_for(spec)
        try:
            print_ = fingerprint(path, proc.identity, options_key(spec, [], output_dir), confined)
        except OSError as exc:
            outcome, error = None, f"cannot read: {exc.strerror or exc}"
        else:
            outcome = attempt(
                InputFile(path, root),
                proc,
                output_dir=Path(output_dir) if output_dir else None,
                timeout=timeout,
                print_=print_,
                roots=confined,
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
    with masking(Masker(environment_secrets())):  # the environment's secrets out of errors and logs
        return _reprocess(ids, processor, timeout)


def _reprocess(ids: list[int] | None, processor: str | None, timeout: float | None) -> State:
    if processor is not None:
        try:
            # a password inside a URL reached the flow run's parameters: out of them, and refused
            refuse_plain_secrets(["processor"] if scrub_text(processor) != processor else [], where="")
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
