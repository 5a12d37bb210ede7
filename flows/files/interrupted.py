"""A batch whose records database stops answering stops too, and says so once.

Without its records a batch cannot skip what is done or remember what it did, so carrying on
would only redo work later. The first chunk that cannot write asks the others of this process
to stop (`stop`), the flow drains what is in flight and ends with exit 4 and one line, and the
job is marked `interrupted` with what was committed before: at once when the database answers
that last write, else by the next `files` command that reaches it (`reconcile`), from a note
the batch leaves in OPSFLOW_HOME/interrupted/.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from flows.errors import OpsflowError
from flows.records import files as store

_stopping: dict[str, str] = {}  # job id -> why, for the chunks of this process
_lock = threading.Lock()


def stop(job_id: str, reason: str) -> None:
    """Ask every chunk of `job_id` in this process to stop before its next file."""
    with _lock:
        _stopping.setdefault(job_id, reason)


def stopped(job_id: str) -> str | None:
    with _lock:
        return _stopping.get(job_id)


def forget(job_id: str) -> None:
    with _lock:
        _stopping.pop(job_id, None)


def notes_dir() -> Path:
    return Path(os.environ.get("OPSFLOW_HOME", Path.home() / ".opsflow")) / "interrupted"


def record(job_id: str, error: str, counters: dict[str, int]) -> bool:
    """Mark the job interrupted now; when the database still does not answer, leave a note for
    the next command that reaches it. Returns whether the job's record was updated."""
    from flows.records.db import session

    try:
        with session() as db:
            store.mark_interrupted(db, job_id, error, counters)
        return True
    except (OpsflowError, SQLAlchemyError):
        folder = notes_dir()
        folder.mkdir(parents=True, exist_ok=True)
        note = {"job_id": job_id, "error": error, "counters": counters}
        temporary = folder / f".{job_id}.json.tmp"
        temporary.write_text(json.dumps(note))
        os.replace(temporary, folder / f"{job_id}.json")
        return False


def reconcile(db: Session) -> list[str]:
    """Mark the jobs this host saw interrupted while their database was away; returns their ids.
    A note about a job this database does not hold (another records database) is kept."""
    folder = notes_dir()
    if not folder.is_dir():
        return []
    marked = []
    for path in sorted(folder.glob("*.json")):
        try:
            note: dict[str, Any] = json.loads(path.read_text())
            job_id = str(note["job_id"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        job = store.mark_interrupted(db, job_id, str(note.get("error") or ""), note.get("counters") or {})
        if job is not None:
            marked.append(job_id)
            with contextlib.suppress(OSError):
                path.unlink()
    return marked
