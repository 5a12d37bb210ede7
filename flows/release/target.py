"""A release target on disk: what blue, green and live are, changed only by atomic renames.

    ROOT/releases/<version>/   one directory per deployed version (never changed once installed)
    ROOT/blue -> releases/v1   what the blue instance serves
    ROOT/green -> releases/v2  what the green instance serves
    ROOT/current -> blue       the live color: the router sends traffic there
    ROOT/run/<color>.pid       the instances' process ids (instances.py)
    ROOT/ENVIRONMENT           the environment this directory is the target of (its first release)

Links are replaced with rename(2), so a reader sees the old or the new target, never none.
A directory is the target of one environment: its lock and approval policy must not depend on
how a command spells it (`-e production/`, `--root` naming it under another environment), so
environment names are plain names and an operation naming another environment is refused.
Pure file operations: no Prefect, no network.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flows.errors import PermissionFailure, ValidationError

COLORS = ("blue", "green")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
ENVIRONMENT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
PRODUCTION = "production"


def other(color: str) -> str:
    return COLORS[1 - COLORS.index(color)]


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version or ""):
        raise ValidationError(
            f"release version {version!r}: use letters, digits and . _ + - (at most 64), e.g. 1.4.2"
        )
    return version


def check_environment(environment: str) -> str:
    """`environment` when it is a plain name (it names a directory and a lock), else exit 3."""
    if not ENVIRONMENT_RE.fullmatch(environment or ""):
        raise ValidationError(
            f"environment name {environment!r}: use lowercase letters, digits, _ and - starting with "
            "a letter (at most 63), e.g. production — a name, not a path (use --root for a directory)"
        )
    return environment


@dataclass(frozen=True)
class Target:
    root: Path

    def link(self, name: str) -> Path:
        return self.root / name

    def release_dir(self, version: str) -> Path:
        return self.root / "releases" / check_version(version)

    def _read(self, name: str) -> str | None:
        try:
            return os.readlink(self.link(name))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PermissionFailure(f"cannot read {self.link(name)}: {exc.strerror}") from None

    def live(self) -> str | None:
        """The color `current` points to; None before the first release."""
        color = self._read("current")
        return color if color in COLORS else None

    def idle(self) -> str:
        """The color the next release goes to: not the live one (blue on a first release)."""
        live = self.live()
        return other(live) if live else "blue"

    def version(self, color: str) -> str | None:
        """The version a color serves (the name of the release directory its link points to)."""
        target = self._read(color)
        return Path(target).name if target else None

    def point(self, name: str, target: str) -> str | None:
        """Make link `name` point to `target` (relative to ROOT) atomically; returns the old target."""
        old = self._read(name)
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f".{name}.{os.getpid()}.tmp"
        temp.unlink(missing_ok=True)
        os.symlink(target, temp)
        os.replace(temp, self.link(name))
        return old

    def install(self, source: Path, version: str) -> tuple[Path, bool]:
        """Copy `source` to releases/<version> unless already there; (its path, newly installed).

        A version directory is never overwritten: installing the same version again reuses it,
        so a re-run release or a rollback serves exactly what was tested.
        """
        dest = self.release_dir(version)
        if dest.is_dir():
            return dest, False
        if not source.is_dir():
            raise ValidationError(f"release source {source} is not a directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=dest.parent))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True, symlinks=True)
            (staging / "VERSION").write_text(version + "\n")
            os.rename(staging, dest)
        except PermissionError as exc:
            raise PermissionFailure(f"cannot install {source} into {dest}: {exc.strerror}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest, True

    def environment(self) -> str | None:
        """The environment this directory is the target of, as its first release recorded it."""
        try:
            name = self.link("ENVIRONMENT").read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PermissionFailure(f"cannot read {self.link('ENVIRONMENT')}: {exc.strerror}") from None
        return name or None

    def claim(self, environment: str) -> None:
        """Record that this directory is `environment`'s target, unless it already says whose it is."""
        if self.environment() is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f".ENVIRONMENT.{os.getpid()}.tmp"
        temp.write_text(check_environment(environment) + "\n")
        os.replace(temp, self.link("ENVIRONMENT"))

    def owner(self) -> str | None:
        """Whose target this directory is: what it recorded, else the environment whose default
        directory it is (production's included before its first release), else nobody yet."""
        recorded = self.environment()
        if recorded is not None:
            return recorded
        here = self.root.resolve()
        for name in (PRODUCTION, here.name):
            if ENVIRONMENT_RE.fullmatch(name) and release_root(None, name) == here:
                return name
        return None

    def check_owner(self, environment: str) -> None:
        """Exit 3 when this directory is the target of another environment than `environment`."""
        owner = self.owner()
        if owner is not None and owner != environment:
            raise ValidationError(
                f"{self.root} is the target of {owner}, not of {environment}: "
                f"name its environment (-e {owner}) to operate on it"
            )

    def releases(self) -> list[str]:
        base = self.root / "releases"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def status(self) -> dict[str, str | None]:
        live = self.live()
        return {
            "root": str(self.root),
            "live": live,
            "live_version": self.version(live) if live else None,
            "blue": self.version("blue"),
            "green": self.version("green"),
        }


def release_root(root: str | None, environment: str) -> Path:
    """`root`, else $OPSFLOW_RELEASE_ROOT/<environment>, else ~/.opsflow/releases/<environment>;
    resolved (links included), so one directory has one name for its lock."""
    if root:
        return Path(root).expanduser().resolve()
    from flows.local_server import opsflow_home

    base = os.environ.get("OPSFLOW_RELEASE_ROOT")
    home = Path(base).expanduser() if base else opsflow_home() / "releases"
    return (home / check_environment(environment)).resolve()
