"""Terminal output in seed 003's format: `[2026-01-01 10:30:00] [INFO] [name] message`.

Every line opsflow writes to a terminal or a log goes through `escape_controls`: a value, a step's
output, a file name or an error's text holding control characters (`\r`, `\x1b[2J`, other C0 and
C1 characters, bidirectional overrides) shows them escaped, so no input can rewrite, hide or
forge another line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}

# C0 controls, DEL, C1 controls, and the characters that reorder or break lines on display
_CONTROLS = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029]
_CONTROLS += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _CONTROLS
}
_KEEP_LAYOUT = {ord("\n"): None, ord("\t"): None}


def escape_controls(text: str, *, lines: bool = False) -> str:
    """`text` with every control character written as an escape (`\x1b`, `\r`, `\u202e`); with
    `lines`, newlines and tabs are kept (tables, plans), everything else is still escaped."""
    table = {k: v for k, v in _ESCAPES.items() if k not in _KEEP_LAYOUT} if lines else _ESCAPES
    return text.translate(table)


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
            line = escape_controls(f"[{stamp}] [{level}] [{name or self.name}] {message}")
            print(line, file=sys.stderr, flush=True)

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
        print(escape_controls(text, lines=True), flush=True)

    @staticmethod
    def json(data: Any) -> None:
        print(json.dumps(data, indent=2, default=str), flush=True)
