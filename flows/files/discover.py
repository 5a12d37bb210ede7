"""INPUT arguments (directories, files, globs) -> a stream of input files, never a full list.

Paths are absolute, so a file named `-rf` can never be read as an option by a command, and
each carries the root it was found under, so outputs mirror the input tree.

Discovery only names files: a file or a folder above it can be replaced by a link afterwards.
`open_input` is what makes a name safe to read: it opens the file once and checks the file
opened, and the processor then reads that descriptor, never the name again.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import itertools
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flows.errors import PermissionFailure, ValidationError


@dataclass(frozen=True)
class InputFile:
    path: Path  # absolute
    root: Path  # the directory it was found under (its parent for single files)

    @property
    def relative(self) -> Path:
        return self.path.relative_to(self.root)


def iter_inputs(
    inputs: Iterable[str], *, allowed_roots: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> Iterator[InputFile]:
    """Every regular file named by `inputs`, depth first, sorted per directory, each once.

    Directories in `exclude` (the batch's output directory, when it sits inside an input) are
    not walked: a re-run must not take its own outputs for inputs.
    """
    roots = [Path(r).resolve() for r in allowed_roots] if allowed_roots else None
    seen_dirs: set[tuple[int, int]] = set()
    for skipped in exclude:
        with contextlib.suppress(OSError):
            info = Path(skipped).stat()
            seen_dirs.add((info.st_dev, info.st_ino))
    for raw in inputs:
        matches = sorted(glob.glob(raw, recursive=True)) if glob.has_magic(raw) else [raw]
        if not matches:
            raise ValidationError(f"no file matches {raw!r}")
        for match in matches:
            path = Path(match).resolve()
            if not _inside(path, roots):
                raise PermissionFailure(f"{path} is outside the allowed roots ({', '.join(map(str, roots))})")
            if path.is_dir():
                yield from _walk(path, path, seen_dirs, roots)
            elif path.is_file():
                # A file matched by a glob keeps its place under the glob's fixed prefix, so
                # `in/**/*.csv` mirrors the tree instead of flattening it.
                yield InputFile(path, _glob_base(raw) if glob.has_magic(raw) else path.parent)
            elif not path.exists():
                raise ValidationError("no such file or directory", where=str(match))


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = [p for p in itertools.takewhile(lambda part: not glob.has_magic(part), parts)]
    return Path(*fixed).resolve() if fixed else Path.cwd()


def _inside(path: Path, roots: list[Path] | None) -> bool:
    return roots is None or any(path == r or r in path.parents for r in roots)


def _walk(
    directory: Path, root: Path, seen: set[tuple[int, int]], roots: list[Path] | None = None
) -> Iterator[InputFile]:
    try:
        info = directory.stat()
    except OSError as exc:
        raise PermissionFailure(f"cannot read directory: {exc.strerror}", where=str(directory)) from None
    key = (info.st_dev, info.st_ino)
    if key in seen:  # a symlink loop, or the same directory named twice
        return
    seen.add(key)
    try:
        with os.scandir(directory) as entries:
            names = sorted(entries, key=lambda e: e.name)
    except PermissionError:
        raise PermissionFailure("permission denied", where=str(directory)) from None
    for entry in names:
        if entry.name.startswith(".opsflow-"):  # our own temporary outputs
            continue
        if entry.is_symlink() and not _inside(Path(entry.path).resolve(), roots):
            # A link inside an allowed root must not lead out of it.
            raise PermissionFailure(f"{entry.path} links outside the allowed roots")
        if entry.is_dir(follow_symlinks=True):
            yield from _walk(Path(entry.path), root, seen, roots)
        elif entry.is_file(follow_symlinks=True):
            yield InputFile(Path(entry.path), root)


#: Where the kernel names the file behind a descriptor (Linux); elsewhere the identity is compared.
_FD_NAMES = Path("/proc/self/fd")


def open_input(path: Path, roots: Iterable[Path] | None = None) -> int:
    """`path` opened for reading as a descriptor, once it is known to be a regular file inside
    `roots` (resolved directories; None: anywhere). OSError otherwise (EPERM: outside the roots).

    The name is resolved and the result opened without following a link at its end; then the
    file actually opened is located from its descriptor and checked against the roots, so a link
    swapped in at the file or at any folder above it, at any moment, is caught. Reading the
    descriptor (or `/dev/fd/N`) reads the file checked, whatever happens to the name later."""
    tops = None if roots is None else [str(r) for r in roots]
    real = os.path.realpath(path)
    if tops is not None and not _inside_text(real, tops):
        raise OSError(errno.EPERM, "leads outside the allowed roots", str(path))
    if not stat.S_ISREG(os.lstat(real).st_mode):  # before opening: a FIFO or a device has effects
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if tops is not None:
            try:
                opened = os.readlink(_FD_NAMES / str(fd))
            except FileNotFoundError:  # no /proc: the file opened must be the one still named
                again = os.lstat(real)
                opened = real if (again.st_dev, again.st_ino) == (info.st_dev, info.st_ino) else ""
            if not opened or not _inside_text(opened, tops):
                raise OSError(errno.EPERM, "leads outside the allowed roots", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _inside_text(real: str, tops: list[str]) -> bool:
    """`_inside` for resolved paths as text (a batch checks every file twice: pathlib is slow)."""
    return any(real == top or real.startswith(top.rstrip("/") + "/") for top in tops)


def count_inputs(inputs: Iterable[str], **kwargs: object) -> int:
    """How many files `iter_inputs` will yield (one cheap pass of directory listings)."""
    return sum(1 for _ in iter_inputs(inputs, **kwargs))  # type: ignore[arg-type]
