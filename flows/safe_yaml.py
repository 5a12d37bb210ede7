"""The one YAML loader for every file opsflow reads: safe tags only, alias expansion bounded,
every error one line with file:line.

An alias repeats the node its anchor names, and anchors may name nodes full of aliases: nine
lines of nine aliases each stand for 9**9 values ("billion laughs", a few hundred bytes). The
composed document shares those nodes, so composing is cheap; whatever walks the values later
(line indexing, pydantic, templates) is not. The composed graph is therefore measured first,
each node's expanded size computed once, and a document whose aliases repeat more than
`MAX_ALIAS_NODES` values is refused naming the alias that went past the limit. The C loader
still does the parsing; the events are only re-read, to find that alias's line, when a
document is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from flows.errors import ValidationError

try:  # the C loader is several times faster on large files
    Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    Loader = yaml.SafeLoader

#: Most values all aliases of one document may repeat, counted as they would be expanded.
MAX_ALIAS_NODES = 100_000


def load_yaml(
    text: str,
    path: str | os.PathLike[str],
    *,
    visit: Callable[[Any, yaml.Node], None] | None = None,
) -> Any:
    """The document in `text` as Python values (None when empty); `path` is for messages.

    `visit(loader, node)` sees the composed node graph, checked, before it is constructed (the
    workflow loader records each value's line there).
    """
    with _composed(text, path) as (loader, node):
        if node is None:
            return None
        if visit is not None:
            visit(loader, node)
        return loader.construct_document(node)


def compose_yaml(text: str, path: str | os.PathLike[str]) -> yaml.Node | None:
    """The checked node graph of the document in `text`, for callers that need node positions."""
    with _composed(text, path) as (_, node):
        return node


@contextmanager
def _composed(text: str, path: str | os.PathLike[str]) -> Iterator[tuple[Any, yaml.Node | None]]:
    """A loader and its document's node graph, aliases checked; YAML errors as one line."""
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            check_aliases(node, text, path)
        yield loader, node
    except yaml.YAMLError as exc:
        raise yaml_error(exc, text, path) from None
    except RecursionError:
        raise ValidationError("malformed YAML: nested too deeply", where=str(path)) from None
    finally:
        loader.dispose()


def yaml_error(exc: yaml.YAMLError, text: str, path: str | os.PathLike[str]) -> ValidationError:
    """A YAML parser's error as one line naming the file and line."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        return ValidationError(f"malformed YAML: {exc.problem or exc.context}", where=where)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return ValidationError(
            f"malformed YAML: {exc.reason} (character {exc.character!r})", where=f"{path}:{line}"
        )
    return ValidationError(f"malformed YAML: {exc}", where=str(path))


def check_aliases(root: yaml.Node, text: str, path: str | os.PathLike[str]) -> None:
    """Refuse a graph whose aliases repeat more than MAX_ALIAS_NODES values, or one that
    contains itself (`&a [*a]`), naming the line of the alias at fault."""
    sizes: dict[int, int] = {}
    written = 0  # distinct nodes: what the text spells out; the rest is repetition by aliases
    open_ids: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    # Iterative post-order: a deeply nested document must not exhaust Python's stack here.
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_ids.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        if key in open_ids:
            raise ValidationError("an alias refers to a node that contains it", where=_alias_line(text, path))
        open_ids.add(key)
        written += 1
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_ids:
                raise ValidationError(
                    "an alias refers to a node that contains it", where=_alias_line(text, path)
                )
            if id(child) not in sizes:
                stack.append((child, False))
    if sizes[id(root)] - written > MAX_ALIAS_NODES:
        raise ValidationError(
            f"YAML aliases repeat more than {MAX_ALIAS_NODES:,} values — write the values out, "
            "or use fewer nested aliases",
            where=_alias_line(text, path),
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _alias_line(text: str, path: str | os.PathLike[str]) -> str:
    """`file:line` of the alias whose expansion passes the limit (or refers to its own anchor),
    found by replaying the parser's events with each anchor's expanded size."""
    sizes: dict[str, int] = {}
    open_anchors: set[str] = set()
    frames: list[list[Any]] = [[None, 0]]  # per open collection: its anchor, its size so far
    repeated = 0
    for event in yaml.parse(text, Loader=Loader):
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                return f"{path}:{event.start_mark.line + 1}"
            size = sizes.get(event.anchor, 1)
            repeated += size
            if repeated > MAX_ALIAS_NODES:
                return f"{path}:{event.start_mark.line + 1}"
            frames[-1][1] += size
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                sizes[event.anchor] = 1
            frames[-1][1] += 1
        elif isinstance(event, yaml.CollectionStartEvent):
            if event.anchor:
                open_anchors.add(event.anchor)
            frames.append([event.anchor, 1])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, size = frames.pop()
            if anchor:
                open_anchors.discard(anchor)
                sizes[anchor] = size
            frames[-1][1] += size
    return str(path)
