"""Reading a file someone names (a workflow, a batch config, a migration, a schema): one way.

Only regular files are read, and only up to a size. A FIFO given as a workflow would block the
reader until some writer appears, `/dev/zero` or `/dev/urandom` would feed it without end, a
directory cannot be read at all: each is refused with one line (exit 3) before any byte is
read. The file is opened without blocking and checked again on the open descriptor, so a path
swapped for a FIFO between the check and the open is refused too.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from flows.errors import PermissionFailure, ValidationError

#: The largest file opsflow reads as configuration (workflows, configs, schemas, migrations).
MAX_FILE_BYTES = 5 * 1024 * 1024

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _refuse_special(mode: int, where: str) -> None:
    if not stat.S_ISREG(mode):
        raise ValidationError(f"is {_kind(mode)}, not a regular file — give a file", where=where)


def open_regular(path: str | os.PathLike[str], *, what: str = "file") -> BinaryIO:
    """`path` opened for reading in binary, or an opsflow error: missing (3), not a regular
    file (3), not readable (5). `what` names the file in the "no such ..." message."""
    where = str(path)
    try:
        # stat first: opening some devices has effects of its own, a FIFO waits for a writer
        _refuse_special(os.stat(path).st_mode, where)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ValidationError(f"no such {what}", where=where) from None
    except PermissionError:
        raise PermissionFailure("permission denied", where=where) from None
    except OSError as exc:
        raise ValidationError(exc.strerror or str(exc), where=where) from None
    try:
        _refuse_special(os.fstat(fd).st_mode, where)  # the file opened is the file checked
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_user_bytes(
    path: str | os.PathLike[str], *, what: str = "file", limit: int = MAX_FILE_BYTES
) -> bytes:
    """The whole file, refused (exit 3) past `limit` bytes, also when it grows while read."""
    where = str(path)
    with open_regular(path, what=what) as handle:
        try:
            if os.fstat(handle.fileno()).st_size > limit:
                raise ValidationError(f"larger than {_size(limit)}", where=where)
            data = handle.read(limit + 1)
        except OSError as exc:
            raise ValidationError(exc.strerror or str(exc), where=where) from None
    if len(data) > limit:
        raise ValidationError(f"larger than {_size(limit)}", where=where)
    return data


def read_user_text(path: str | os.PathLike[str], *, what: str = "file", limit: int = MAX_FILE_BYTES) -> str:
    """The file as UTF-8 text (see `read_user_bytes`), newlines translated as `open()` does;
    other encodings are refused (exit 3)."""
    data = read_user_bytes(path, what=what, limit=limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=str(path)) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"
