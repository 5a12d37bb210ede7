"""A step's output lines into the run log, capped: a chatty command must not flood Prefect.

The first `HEAD` lines are logged as they come; past that, every line goes to a file under
`OPSFLOW_HOME/logs/` and the last `TAIL` lines (where errors usually are) are logged at the
end, with the file's path.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

HEAD = 1000
TAIL = 50


def logs_dir() -> Path:
    return Path(os.environ.get("OPSFLOW_HOME", Path.home() / ".opsflow")) / "logs"


class StepLog:
    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        step_id: str,
        mask: Callable[[str], str] = lambda text: text,
        secret_stdout: str | None = None,
    ) -> None:
        self.logger = logger
        self.mask = mask  # secrets out before a line is logged or spooled (flows/masking.py)
        self.secret_stdout = secret_stdout  # the secret output stdout is: counted, never logged
        self.hidden_stdout = 0
        self.step_id = step_id
        self.count = 0
        self.head: list[str] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL)
        self.spool: TextIO | None = None
        self.path: Path | None = None

    def __enter__(self) -> StepLog:
        return self

    def without_stdout(self, sink: Callable[[str, str], None]) -> Callable[[str, str], None]:
        """`sink` for stderr only: stdout is a secret output, which no log may keep."""

        def stderr_only(stream: str, text: str) -> None:
            if stream == "stdout":
                self.hidden_stdout += 1
            else:
                sink(stream, text)

        return stderr_only

    def line(self, stream: str, text: str) -> None:
        text = self.mask(text)
        text = text if stream == "stdout" else f"stderr| {text}"
        self.count += 1
        if self.count <= HEAD:
            self.head.append(text)
            self.logger.info(text)
            return
        if self.spool is None:
            self._open_spool()
        assert self.spool is not None
        self.spool.write(text + "\n")
        self.tail.append(text)

    def _open_spool(self) -> None:
        folder = logs_dir()
        folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^\w.-]+", "_", self.step_id)[:80]
        self.path = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{safe}-{os.getpid()}.log"
        self.spool = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self.spool.writelines(line + "\n" for line in self.head)
        self.head = []

    def __exit__(self, *exc: object) -> None:
        if self.hidden_stdout:
            self.logger.info(
                f"{self.hidden_stdout} line(s) of stdout not logged: the secret output `{self.secret_stdout}`"
            )
        if self.spool is None:
            return
        self.spool.close()
        hidden = self.count - HEAD - len(self.tail)
        if hidden > 0:
            self.logger.warning(f"… {hidden} lines not logged here; the full output is in {self.path}")
        for text in self.tail:
            self.logger.info(text)
