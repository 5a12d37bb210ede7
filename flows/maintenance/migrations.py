"""Migration files and what to do with them. Pure: no database, no Prefect.

A migration is `<version>_<name>.sql` (or `V<version>__<name>.sql`) in the migrations
directory; versions are integers applied in numeric order. Its checksum is the sha256 of its
bytes: an applied migration whose file changed since is refused, because the database no
longer matches what the file says. A file whose first lines contain
`-- opsflow: no-transaction` runs outside a transaction (for CREATE INDEX CONCURRENTLY and
the like); the backup taken before the run is then its only safety net.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flows.errors import OpsflowError, ValidationError
from flows.user_files import read_user_bytes

_NAME = re.compile(r"^V?(?P<version>\d+)(?:__?|-)(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)\.sql$")
#: Largest migration file read (each is held in memory while it runs).
MAX_MIGRATION_BYTES = 64 * 1024 * 1024
NO_TRANSACTION = re.compile(r"^\s*--\s*opsflow:\s*no-transaction\s*$", re.I | re.M)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    checksum: str
    sql: str
    transactional: bool = True

    @property
    def label(self) -> str:
        return f"{self.version:04d} {self.name}"


@dataclass(frozen=True)
class Applied:
    """A row of `migration_history` with success = true."""

    version: int
    name: str
    checksum: str
    applied_at: datetime
    duration: float


@dataclass
class MigrationPlan:
    applied: list[Applied]
    pending: list[Migration]
    changed: list[tuple[Applied, Migration]]  # applied, but the file differs now
    missing: list[Applied]  # applied, but the file is gone

    @property
    def head(self) -> int | None:
        return max((a.version for a in self.applied), default=None)


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def discover(directory: Path) -> list[Migration]:
    """Every migration in `directory`, in version order; bad names and duplicates are errors."""
    if not directory.is_dir():
        raise ValidationError(f"migrations directory {directory} does not exist (OPSFLOW_MIGRATIONS_DIR)")
    found: dict[int, Migration] = {}
    problems = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            problems.append(f"{path}: not a migration name — use NNN_name.sql (e.g. 001_create_users.sql)")
            continue
        try:
            data = read_user_bytes(path, what="migration", limit=MAX_MIGRATION_BYTES)
            text = data.decode("utf-8")
        except OpsflowError as exc:  # a FIFO, a device, unreadable, too large
            problems.append(str(exc))
            continue
        except UnicodeDecodeError as exc:
            problems.append(f"{path}: not UTF-8 text (byte {exc.start})")
            continue
        version = int(match["version"])
        if version in found:
            problems.append(f"{path}: version {version} is also {found[version].path.name}")
            continue
        if not text.strip():
            problems.append(f"{path}: empty migration")
            continue
        head = "\n".join(text.splitlines()[:5])
        found[version] = Migration(
            version=version,
            name=match["name"],
            path=path,
            checksum=checksum(data),
            sql=text,
            transactional=not NO_TRANSACTION.search(head),
        )
    if problems:
        error = ValidationError(
            problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        )
        error.details = problems  # type: ignore[attr-defined]
        raise error
    return [found[v] for v in sorted(found)]


def plan(migrations: list[Migration], applied: list[Applied]) -> MigrationPlan:
    by_version = {m.version: m for m in migrations}
    done = {a.version: a for a in applied}
    changed = [
        (a, by_version[a.version])
        for a in applied
        if a.version in by_version and a.checksum != by_version[a.version].checksum
    ]
    missing = [a for a in applied if a.version not in by_version]
    pending = [m for m in migrations if m.version not in done]
    return MigrationPlan(applied=applied, pending=pending, changed=changed, missing=missing)


def refuse_changed(the_plan: MigrationPlan) -> None:
    """An edited, already-applied migration stops everything before any change."""
    if the_plan.changed:
        names = ", ".join(m.path.name for _, m in the_plan.changed)
        raise ValidationError(
            f"applied migration(s) changed since they ran: {names} — checksums differ from "
            "migration_history; restore the original file(s) and add a new migration instead"
        )


def out_of_order(the_plan: MigrationPlan) -> list[Migration]:
    """Pending migrations older than the newest applied one (merged late from a branch)."""
    head = the_plan.head
    return [m for m in the_plan.pending if head is not None and m.version < head]
