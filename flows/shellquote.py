"""Values in shell commands: where each lands, and how it is quoted there. Pure.

Workflow commands (`echo "v={{ .x }}"`) and file processors (`gzip -c {input} > {output}`) put
values into shell text. Each value is quoted for the place it lands in: outside quotes, inside
"...", '...', a here-document, a comment. Where bash runs text as code whatever its quoting,
a value is refused before anything runs: in arithmetic (`$(( ))`, `a[...]`: bash evaluates
`a[$(cmd)]`) unless it is a plain number, as a variable name, in a second shell's script
(`sh -c '...'`, `eval`, `trap`, `ssh host ...`, an awk program), in backticks or `$'...'`.
Rendering reads the rendered command again (flows/workflow/template.py), so blocks and `| raw`
text cannot move a value elsewhere than it is checked.

`analyse` reads the command with bash's grammar (shellparse.py) and says where each value
lands; `check_value` and `quote_text` then treat each value for its place.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

UNQUOTED, DOUBLE, SINGLE, HEREDOC, LITERAL, COMMENT, ARITH = (
    "unquoted",
    "double",
    "single",
    "heredoc",
    "literal",
    "comment",
    "arith",
)
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


@dataclass(frozen=True)
class Hole:
    """A template action in command text: `value` renders text there; other actions (`if`,
    `range`, comments) render nothing. `trim_*`: the action trims the whitespace beside it."""

    value: bool = True
    trim_before: bool = False
    trim_after: bool = False


@dataclass(frozen=True)
class Slot:
    """Where one value lands."""

    kind: str  # UNQUOTED, DOUBLE, SINGLE, HEREDOC, LITERAL, COMMENT or ARITH
    line: int  # the command's line the value is on (1-based)
    delimiter: str = ""  # here-documents: no line of the result may equal it
    strip_tabs: bool = False  # `<<-`: a line of tabs and the delimiter ends the document too
    starts_end: bool = False  # inside `$( )`: bash ends the document at a line starting with it
    line_before: str = ""  # here-documents: the line's text before the value ("\0": another value)
    line_after: str = ""
    option_of: str | None = None  # in an argument of this command: a leading `-` is an option
    starts_word: bool = False  # the value's first character starts that argument
    command_word: bool = False  # the value is the command's name: always quoted
    one_word: bool = False  # more words would change what runs (ssh's host): no lists
    program: bool = False  # the value chooses what runs: a command's name, the command a wrapper
    # runs (`sudo CMD`), the script a shell, interpreter or `source` runs (`bash FILE`)


@dataclass(frozen=True)
class Shape:
    """A command's values: where each lands (`slots`, one per value hole), the nesting of
    quotes and substitutions at every hole (`nesting`), or why none can be placed (`problem`)."""

    slots: tuple[Slot, ...]
    nesting: tuple[tuple[str, ...], ...]
    problem: str | None = None


def analyse(parts: Sequence[str | Hole]) -> Shape:
    """Where each value hole of `parts` (literal text and holes, in order) lands."""
    if not any(isinstance(p, Hole) and p.value for p in parts):
        return Shape((), tuple(() for p in parts if isinstance(p, Hole)))
    # The grammar is loaded only for commands that carry values (see shellparse).
    from flows.shellparse import analyse_parts

    return analyse_parts(tuple(parts))


def escape_double(text: str) -> str:
    """For inside "...": backslash the characters the shell still interprets there."""
    return re.sub(r'([\\"$`])', r"\\\1", text)


def escape_single(text: str) -> str:
    """For inside '...': close, add an escaped quote, reopen."""
    return text.replace("'", "'\\''")


def escape_heredoc(text: str) -> str:
    """For an expanding here-document: backslash what would expand."""
    return re.sub(r"([\\$`])", r"\\\1", text)


def flatten(text: str) -> str:
    """For a comment: a newline would end it."""
    return " ".join(text.split())


ESCAPES: dict[str, Callable[[str], str]] = {
    UNQUOTED: shlex.quote,
    DOUBLE: escape_double,
    SINGLE: escape_single,
    HEREDOC: escape_heredoc,
    LITERAL: str,
    COMMENT: flatten,
    ARITH: str,  # a plain number (check_value) needs no quoting anywhere
}


class UnsafeValue(ValueError):
    """A value no quoting makes safe where it lands; the message says why and what to do."""


def check_value(
    slot: Slot, text: str, *, first: bool = True, shown: str = "the value", options: bool = False
) -> None:
    """Refuse `text` where it would change what the command does, whatever its quoting.

    `first`: `text` starts the value (outside quotes, each later item of a list starts a word).
    `options`: the value may be an option (its author says so), so a leading `-` is allowed.
    """
    if "\x00" in text:
        raise UnsafeValue(f"{shown} holds a NUL byte, which a command's text cannot carry — remove it")
    if slot.kind == ARITH and not _NUMBER.fullmatch(text):
        raise UnsafeValue(
            f"{shown} lands in arithmetic, where bash evaluates text such as `a[$(cmd)]`, and "
            "its value is not a plain number"
        )
    if slot.kind in (HEREDOC, LITERAL):
        _check_document(slot, ESCAPES[slot.kind](text), shown)
    starts = slot.starts_word if first else slot.kind == UNQUOTED
    if slot.option_of and starts and text.startswith("-") and not options:
        raise UnsafeValue(
            f"{shown} starts with `-`, so `{slot.option_of}` would take it for an "
            "option — write `--` before it in the command to end the options"
        )


def _check_document(slot: Slot, text: str, shown: str) -> None:
    """No line the value makes, with the text around it, may end the here-document early."""

    def pieces(literal: str) -> list[str | None]:  # None stands for another value: any text
        out: list[str | None] = []
        for i, piece in enumerate(literal.split("\0")):
            out += [None, piece] if i else [piece]
        return out

    lines = text.split("\n")
    before, after = pieces(slot.line_before), pieces(slot.line_after)
    if len(lines) == 1:
        candidates = [[*before, lines[0], *after]]
    else:
        candidates = [[*before, lines[0]], *([line] for line in lines[1:-1]), [lines[-1], *after]]
    for line in candidates:
        if slot.strip_tabs:  # `<<-` strips a line's leading tabs before comparing it
            for i, piece in enumerate(line):
                if piece is None:
                    break
                line[i] = piece.lstrip("\t")
                if line[i]:
                    break
        regex = "".join(".*" if piece is None else re.escape(piece) for piece in line)
        known = "".join(p for p in line[: line.index(None)] if p is not None) if None in line else None
        starts = slot.starts_end and (
            "".join(p for p in line if p is not None).startswith(slot.delimiter)
            if known is None
            else known.startswith(slot.delimiter) or slot.delimiter.startswith(known)
        )
        if starts or re.fullmatch(regex, slot.delimiter, re.S):
            raise UnsafeValue(
                f"{shown} would make a line `{slot.delimiter}`, which ends its here-document early"
            )


def quote_text(slot: Slot, text: str) -> str:
    """`text` quoted for `slot` (once `check_value` passed)."""
    if slot.command_word:
        # A command's name is always quoted: bare, `if` or `PATH=/x` would be syntax.
        return "'" + escape_single(text) + "'"
    return ESCAPES[slot.kind](text)
