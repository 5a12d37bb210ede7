"""One attempt at one file: fingerprint, atomic output, outcome. Pure of Prefect.

The content hash (file bytes + processor identity + options) decides whether a file was
already processed; the output is written to a temporary name in the target directory and
renamed into place only when the processor succeeded, so a killed run never leaves a
half-written output behind.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.files.discover import InputFile
from flows.files.processors import Output, ProcessingFailed, Processor

HASH_CHUNK = 1024 * 1024


@dataclass
class FileOutcome:
    input_path: str
    fingerprint: str
    status: str  # completed | skipped | failed
    processor: str | None = None
    attempts: int = 1
    output_path: str | None = None
    error: str | None = None
    note: str = ""
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration: float = 0.0

    def record(self, job_id: str) -> dict[str, Any]:
        """The row for the records database."""
        row = asdict(self)
        row.pop("note")
        return row | {"job_id": job_id}


def fingerprint(path: Path, identity: str, options: str) -> str:
    """sha256 of the file's path and bytes, the processor's identity and the options that shape
    output. The path is part of it: two files with the same bytes are still two inputs."""
    digest = hashlib.sha256()
    digest.update(str(path).encode("utf-8", "surrogateescape"))
    digest.update(b"\0")
    digest.update(identity.encode())
    digest.update(b"\0")
    digest.update(options.encode())
    digest.update(b"\0")
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def output_path(file: InputFile, processor: Processor, output_dir: Path | None) -> Path | None:
    if output_dir is None:
        return None
    return output_dir / file.relative.parent / processor.output_name(file.path)


def attempt(
    file: InputFile,
    processor: Processor,
    *,
    output_dir: Path | None,
    timeout: float | None,
    print_: str,
    attempts: int = 1,
) -> FileOutcome:
    """Run `processor` on `file` once; never raises for the file's own failure."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    final = output_path(file, processor, output_dir)
    output = None
    if final is not None:
        final.parent.mkdir(parents=True, exist_ok=True)
        output = Output(final.with_name(f".opsflow-{secrets.token_hex(4)}-{final.name}"), final)
    try:
        note = processor.process(file.path, output, timeout)
        if output is not None:
            if not output.path.exists():
                raise ProcessingFailed(f"the processor wrote no output to {output.path.name}")
            os.replace(output.path, output.final)
        status, error = "completed", None
    except ProcessingFailed as exc:
        status, error, note = "failed", str(exc), ""
    except OSError as exc:
        status, error, note = (
            "failed",
            f"{exc.strerror or exc} ({getattr(exc, 'filename', '') or file.path})",
            "",
        )
    finally:
        if output is not None:
            for temporary, destination in output.sides.items():
                if temporary.exists():
                    os.replace(temporary, destination)
            if output.path.exists():
                output.path.unlink()
    return FileOutcome(
        input_path=str(file.path),
        fingerprint=print_,
        status=status,
        processor=processor.identity if status == "completed" else None,
        attempts=attempts,
        output_path=str(final) if final is not None and status == "completed" else None,
        error=error,
        note=note,
        started_at=started,
        completed_at=datetime.now(UTC),
        duration=time.monotonic() - clock,
    )
