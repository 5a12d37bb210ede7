"""Terminal output in seed 003's format: `[2026-01-01 10:30:00] [INFO] [name] message`."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}


class Console:
    """Log lines to stderr, results to stdout; `--quiet` keeps warnings and errors only."""

    def __init__(self, name: str = "opsflow", *, verbose: bool = False, quiet: bool = False) -> None:
        self.name = name
        self.threshold = LEVELS["DEBUG"] if verbose else LEVELS["WARNING"] if quiet else LEVELS["INFO"]
        self.verbose = verbose
        self.quiet = quiet

    def log(self, level: str, message: str, *, name: str | None = None) -> None:
        if LEVELS[level] >= self.threshold:
            stamp = time.strftime(LOG_DATEFMT)
            print(f"[{stamp}] [{level}] [{name or self.name}] {message}", file=sys.stderr, flush=True)

    def info(self, message: str, **kw: Any) -> None:
        self.log("INFO", message, **kw)

    def warning(self, message: str, **kw: Any) -> None:
        self.log("WARNING", message, **kw)

    def error(self, message: str, **kw: Any) -> None:
        self.log("ERROR", message, **kw)

    def debug(self, message: str, **kw: Any) -> None:
        self.log("DEBUG", message, **kw)

    @staticmethod
    def out(text: str = "") -> None:
        print(text, flush=True)

    @staticmethod
    def json(data: Any) -> None:
        print(json.dumps(data, indent=2, default=str), flush=True)
