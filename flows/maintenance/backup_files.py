"""Backups on disk: names, manifests, checksums, listing and what `prune` removes. Pure of Prefect.

A backup is `<dir>/<database>/<id>.dump` (pg_dump custom format, compressed) with its manifest
`<id>.json` beside it. The dump is written as `<id>.dump.partial`, checksummed, renamed, and
only then is the manifest written (atomically), so a backup killed at any moment is never
listed: a file without a manifest, or whose checksum no longer matches it, is not a backup.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from flows.durations import MAX_DURATION_TEXT, check_duration, shown
from flows.errors import OpsflowError, ValidationError
from flows.user_files import open_regular, read_user_text

MANIFEST_VERSION = 1
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 86400}


class Manifest(BaseModel):
    """What a backup holds and how to check it."""

    manifest_version: int = MANIFEST_VERSION
    id: str
    database: str
    server: str
    label: str = "manual"
    created_at: datetime
    file: str
    format: str = "custom"
    compression: int = 6
    size: int
    sha256: str
    duration: float
    pg_dump_version: str = ""
    server_version: int = 0
    tables: dict[str, int] = Field(default_factory=dict)
    verified_at: datetime | None = None
    verification: str | None = None

    def age(self, now: datetime | None = None) -> timedelta:
        return (now or datetime.now(UTC)) - self.created_at

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """`90` (days), `36h`, `15m`, `30d`, `2w` → timedelta; anything else is a validation error."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValidationError(f"{what} {text!r} is not a duration like 30d, 24h, 15m or 90s")
    try:
        seconds = check_duration(float(match.group(1)) * _UNITS[match.group(2)], text)
    except ValueError:
        raise ValidationError(f"{what} {shown(text)}: give at most {MAX_DURATION_TEXT}") from None
    return timedelta(seconds=seconds)


def new_backup_id(database: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{database}-{stamp}"


def database_dir(root: Path, database: str) -> Path:
    return root / database


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, what="backup") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write `<id>.json` atomically (temp file, fsync, rename)."""
    path = folder / f"{manifest.id}.json"
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{manifest.id}.", suffix=".json.partial")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(manifest.model_dump_json(indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at `path`, or None when it is unreadable or not a manifest."""
    try:
        return Manifest.model_validate(json.loads(read_user_text(path)))
    except (OpsflowError, ValueError):
        return None


def list_backups(root: Path, database: str | None = None) -> list[Manifest]:
    """Every backup with a readable manifest and its dump present, newest first."""
    folders = [database_dir(root, database)] if database else sorted(p for p in root.glob("*") if p.is_dir())
    found = []
    for folder in folders:
        for path in folder.glob("*.json"):
            manifest = read_manifest(path)
            if manifest is not None and (folder / manifest.file).is_file():
                found.append(manifest)
    return sorted(found, key=lambda m: m.created_at, reverse=True)


def find_backup(root: Path, ref: str, database: str | None = None) -> tuple[Manifest, Path]:
    """A backup by id, id prefix, `latest`, or path of its dump or manifest."""
    candidate = Path(ref)
    if candidate.suffix in (".dump", ".json") and candidate.exists():
        manifest = read_manifest(candidate.with_suffix(".json"))
        if manifest is None:
            raise ValidationError(f"{candidate}: no readable manifest beside it — not an opsflow backup")
        return manifest, candidate.parent / manifest.file
    backups = list_backups(root, database)
    if ref == "latest":
        matches = backups[:1]
    else:
        matches = [m for m in backups if m.id == ref] or [m for m in backups if m.id.startswith(ref)]
    if not matches:
        where = f" of {database}" if database else ""
        raise ValidationError(f"no backup{where} {ref!r} in {root} — see `db backup list`")
    if len(matches) > 1:
        raise ValidationError(f"{ref!r} names {len(matches)} backups; give more of the id")
    manifest = matches[0]
    return manifest, database_dir(root, manifest.database) / manifest.file


def select_prunable(
    backups: list[Manifest], *, keep_last: int, older_than: timedelta | None, now: datetime | None = None
) -> list[Manifest]:
    """Backups `prune` removes: beyond the newest `keep_last` of each database AND older than
    `older_than` (when given). The newest valid backup is never removed."""
    if keep_last < 1:
        raise ValidationError("--keep-last must be at least 1: prune never removes every backup")
    now = now or datetime.now(UTC)
    by_database: dict[str, list[Manifest]] = {}
    for manifest in sorted(backups, key=lambda m: m.created_at, reverse=True):
        by_database.setdefault(manifest.database, []).append(manifest)
    doomed = []
    for manifests in by_database.values():
        for manifest in manifests[keep_last:]:
            if older_than is None or manifest.age(now) > older_than:
                doomed.append(manifest)
    return doomed


def stale_partials(folder: Path, older_than: timedelta = timedelta(hours=1)) -> list[Path]:
    """Leftovers of killed backups: `.partial` files not written to for a while."""
    if not folder.is_dir():
        return []
    cutoff = datetime.now(UTC).timestamp() - older_than.total_seconds()
    return [p for p in folder.glob("*.partial") if p.stat().st_mtime < cutoff]


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def manifest_summary(manifest: Manifest, now: datetime | None = None) -> dict[str, Any]:
    return {
        "id": manifest.id,
        "database": manifest.database,
        "label": manifest.label,
        "created_at": manifest.created_at.isoformat(timespec="seconds"),
        "age_hours": round(manifest.age(now).total_seconds() / 3600, 1),
        "size": human_size(manifest.size),
        "tables": len(manifest.tables),
        "rows": manifest.rows,
        "verified": manifest.verified_at.isoformat(timespec="seconds") if manifest.verified_at else "",
        "sha256": manifest.sha256[:12],
    }
