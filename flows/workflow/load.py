"""Workflow file -> spec, with file:line on every error."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from flows.errors import ValidationError
from flows.safe_yaml import load_yaml
from flows.user_files import MAX_FILE_BYTES as MAX_FILE_BYTES  # re-exported: the workflow file limit
from flows.user_files import read_user_text
from flows.workflow.spec import Workflow

Location = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedWorkflow:
    """A parsed workflow and where each of its values stands in the file."""

    spec: Workflow
    path: Path
    text: str
    lines: dict[Location, int] = field(repr=False)

    def where(self, loc: Location = ()) -> str:
        """`file:line` of the nearest located value at or above `loc`."""
        return _where(self.path, self.lines, tuple(loc))

    def line(self, loc: Location) -> int | None:
        return _nearest_line(self.lines, tuple(loc))


def read_text(path: Path) -> str:
    """The file's text, or an opsflow error that says why it cannot be read (a FIFO, a device,
    a directory, a file over MAX_FILE_BYTES: exit 3)."""
    return read_user_text(path)


def load_workflow(path: str | os.PathLike[str]) -> LoadedWorkflow:
    """Read and validate a workflow file."""
    path = Path(path)
    return parse_workflow(read_text(path), path)


def parse_workflow(text: str, path: Path) -> LoadedWorkflow:
    """Validate workflow text; `path` is only used in messages."""
    data, lines = _parse_yaml(text, path)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ValidationError(
            f"a workflow file must be a mapping of keys, this one is {kind}", where=f"{path}:1"
        )
    try:
        spec = Workflow.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _explain(exc, path, lines) from None
    return LoadedWorkflow(spec=spec, path=path, text=text, lines=lines)


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[Location, int]]:
    lines: dict[Location, int] = {}

    def index(loader: Any, node: yaml.Node) -> None:
        lines[()] = node.start_mark.line + 1
        _index(loader, node, (), lines, path)

    return load_yaml(text, path, visit=index), lines


def _index(loader: Any, node: yaml.Node, loc: Location, lines: dict[Location, int], path: Path) -> None:
    """Record the line of every mapping key and sequence item; refuse duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool) or key is None:
                raise ValidationError(f"keys must be plain text, got {key!r}", where=f"{path}:{line}")
            if key in seen:
                raise ValidationError(
                    f"duplicate key `{key}` (first at line {seen[key]}) — keep one", where=f"{path}:{line}"
                )
            seen[key] = line
            lines[(*loc, key)] = line
            _index(loader, value_node, (*loc, key), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*loc, i)] = item.start_mark.line + 1
            _index(loader, item, (*loc, i), lines, path)


def _explain(exc: pydantic.ValidationError, path: Path, lines: dict[Location, int]) -> ValidationError:
    messages = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if not _is_pydantic_branch(part))
        where = _where(path, lines, loc)
        messages.append((where, _describe(error, loc), error["type"] != "extra_forbidden"))
    # A misspelt key also makes the real key "missing": the spelling is the message worth reading.
    messages.sort(key=lambda m: (m[2], _line_number(m[0])))
    where, first, _ = messages[0]
    more = (
        f" (and {len(messages) - 1} more problem{'s' if len(messages) > 2 else ''})"
        if len(messages) > 1
        else ""
    )
    err = ValidationError(first + more, where=where)
    err.details = [f"{w}: {m}" for w, m, _ in messages]
    return err


def _line_number(where: str) -> int:
    tail = where.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _is_pydantic_branch(part: Any) -> bool:
    # Unions and function validators add their own names to `loc`; they are not YAML keys.
    return isinstance(part, str) and (
        part.startswith("function-") or part in {"str", "list[str]", "int", "float"}
    )


def _nearest_line(lines: dict[Location, int], loc: Location) -> int | None:
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc)


def _where(path: Path, lines: dict[Location, int], loc: Location) -> str:
    line = _nearest_line(lines, loc)
    return f"{path}:{line}" if line else str(path)


def _describe(error: dict[str, Any], loc: Location) -> str:
    kind = error["type"]
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    if kind == "extra_forbidden":
        key = loc[-1]
        allowed = _allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        suggestion = (
            f" — did you mean `{hint[0]}`?" if hint else f" — allowed here: {', '.join(sorted(allowed))}"
        )
        return f"unknown key `{key}`{suggestion}"
    if kind == "missing":
        return f"`{loc[-1]}` is required (at {dotted})"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{dotted}: {message}"


def _allowed_keys(parent: Location) -> list[str]:
    """Field names of the model that sits at `parent` in a workflow document."""
    model: Any = Workflow
    keyed = False  # the previous key was a `dict[str, Model]`: this part is a user's name
    for part in parent:
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return []
        keyed = getattr(info.annotation, "__origin__", None) is dict
        model = _model_of(info.annotation)
    return list(getattr(model, "model_fields", {}))


def _model_of(annotation: Any) -> Any:
    """The pydantic model inside `list[Model]`, `Model | None`, `dict[str, Model]`, ..."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or getattr(annotation, "__metadata__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    origin = getattr(annotation, "__origin__", None)
    return _model_of(origin) if origin not in (None, list, dict) and origin is not annotation else None
