"""One attempt at one file: fingerprint, atomic output, outcome. Pure of Prefect.

The content hash (file bytes + processor identity + options) decides whether a file was
already processed; the output is written to a temporary name in the target directory and
renamed into place only when the processor succeeded, so a killed run never leaves a
half-written output behind. The input is opened once and checked to be inside the batch's roots
(`open_input`); the processor reads that descriptor, not the name.
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

from flows.files.discover import InputFile, open_input
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


def fingerprint(path: Path, identity: str, options: str, roots: list[Path] | None = None) -> str:
    """sha256 of the file's path and bytes, the processor's identity and the options that shape
    output. The path is part of it: two files with the same bytes are still two inputs.
    OSError when the file is no longer a regular file inside `roots` (see `open_input`)."""
    digest = hashlib.sha256()
    digest.update(str(path).encode("utf-8", "surrogateescape"))
    digest.update(b"\0")
    digest.update(identity.encode())
    digest.update(b"\0")
    digest.update(options.encode())
    digest.update(b"\0")
    with open(open_input(path, roots), "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def output_path(file: InputFile, processor: Processor, output_dir: Path | None) -> Path | None:
    if output_dir is None:
        return None
    return output_dir / file.relative.parent / processor.output_name(file.path)


def _inside(path: Path, directory: Path) -> bool:
    """`path`, its links resolved (also those of parts still to be created), is in `directory`."""
    real, top = path.resolve(), directory.resolve()
    return real == top or top in real.parents


def _temporaries(output: Output) -> list[Path]:
    """Files the processor made from the temporary name (side reports excluded)."""
    try:
        names = [
            output.path.parent / entry.name
            for entry in os.scandir(output.path.parent)
            if entry.name.startswith(output.path.name)
        ]
    except OSError:
        return []
    return [p for p in names if p not in output.sides]


def output_exists(target: Path) -> bool:
    """The output, or what a template made of its name (`{output}.gz`), is there."""
    if target.exists():
        return True
    try:
        return any(entry.name.startswith(target.name + ".") for entry in os.scandir(target.parent))
    except OSError:
        return False


def attempt(
    file: InputFile,
    processor: Processor,
    *,
    output_dir: Path | None,
    timeout: float | None,
    print_: str,
    attempts: int = 1,
    roots: list[Path] | None = None,
) -> FileOutcome:
    """Run `processor` on `file` once; never raises for the file's own failure.

    `roots` (resolved) confine the input: the file opened must be inside one of them."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    final = output_path(file, processor, output_dir)
    output = None
    if final is not None and output_dir is not None and not _inside(final.parent, output_dir):
        # A link inside the output directory must not carry the output, or the folders made
        # for it, anywhere else.
        return FileOutcome(
            input_path=str(file.path),
            fingerprint=print_,
            status="failed",
            attempts=attempts,
            error=f"{final.parent} leads outside the output directory {output_dir}",
            started_at=started,
            completed_at=datetime.now(UTC),
        )
    if final is not None:
        final.parent.mkdir(parents=True, exist_ok=True)
        output = Output(final.with_name(f".opsflow-{secrets.token_hex(4)}-{final.name}"), final)
    produced: Path | None = None
    fd: int | None = None
    try:
        fd = open_input(file.path, roots)
        note = processor.process(file.path, output, timeout, fd)
        if output is not None:
            # `{output}` or `{output}.gz`: whatever the processor made of the temporary name is
            # renamed to the same thing made of the final name.
            made = _temporaries(output)
            if not made:
                raise ProcessingFailed(f"the processor wrote no output to {output.path.name}")
            for temporary in made:
                target = output.final.with_name(output.final.name + temporary.name[len(output.path.name) :])
                os.replace(temporary, target)
                produced = produced or target
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
        if fd is not None:
            os.close(fd)
        if output is not None:
            for temporary, destination in output.sides.items():
                if temporary.exists():
                    os.replace(temporary, destination)
            for leftover in _temporaries(output):  # a failed attempt leaves nothing behind
                leftover.unlink(missing_ok=True)
    return FileOutcome(
        input_path=str(file.path),
        fingerprint=print_,
        status=status,
        processor=processor.identity if status == "completed" else None,
        attempts=attempts,
        output_path=str(produced) if produced is not None and status == "completed" else None,
        error=error,
        note=note,
        started_at=started,
        completed_at=datetime.now(UTC),
        duration=time.monotonic() - clock,
    )
