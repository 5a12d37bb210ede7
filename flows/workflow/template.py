"""The workflow expression language: sandboxed Jinja2 that also reads a Go-template dialect.

Workflow files are written Go-template style (`{{ .environment }}`, `{{ if eq .a "b" }}`,
`{{ range .services }}`). Rather than run two engines, each source is translated once into Jinja
source (gotemplate.py) and compiled by one sandboxed environment: plain Jinja expressions keep
working, and there is a single set of security rules and a single error path (everything
surfaces as `ValidationError`). In shell commands each value is quoted for the place it lands in
(flows/shellquote.py), or refused where no quoting is safe.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import functools
import json
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SecurityError
from jinja2.utils import missing

from flows.errors import ValidationError
from flows.shellcommands import program_choice_problem
from flows.shellquote import Hole, Slot, UnsafeValue, analyse, check_value, quote_text
from flows.workflow.gotemplate import JINJA_BLOCK, JINJA_COMMENT, translate, translate_shell
from flows.workflow.sandbox import (
    LimitedSandbox,
    budget,
    check_size,
    check_tree,
    checked_join,
    counted,
    join_output,
)
from flows.workflow.units import FALSE_WORDS, TRUE_WORDS

_TRUE, _FALSE = TRUE_WORDS, FALSE_WORDS
# Context keys of the render in progress, so an undefined name can suggest the closest one.
_KNOWN: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("known", default=())


@functools.lru_cache(maxsize=1024)
def _slot(encoded: str) -> Slot:
    return Slot(**json.loads(encoded))


def _shell_value(value: Any, encoded: str, shown: str) -> str:
    """The `_shq` filter: `value` checked and quoted for the slot it lands in (gotemplate).
    While a command renders (`_rendering`), values other than `| raw` become placeholders
    instead, quoted once the rendered command has been read again."""
    slot = _slot(encoded)
    pending = _PENDING.get()
    if pending is not None and not isinstance(value, Raw):
        pending.append((value, slot, shown))
        return Raw(_PLACEHOLDER.format(len(pending) - 1))
    return Raw(_quoted_words(value, slot, shown))


def _quoted_words(value: Any, slot: Slot, shown: str) -> str:
    raw = isinstance(value, Raw)
    items = list(_items(value))
    if slot.one_word and len(items) != 1:
        raise ValidationError(
            f"line {slot.line} of the command: `{{{{ {shown} }}}}` must be one word there, and it is "
            f"{len(items)} (a list): more words would change what the command runs"
        )
    if slot.program and not raw and not isinstance(value, bool):  # a bool runs `true` or `false`
        _check_program(items, slot, shown)
    words = []
    for index, (item, plain) in enumerate(items):
        try:
            # `| raw` and a parameter whose pattern allows a leading `-` may pass options
            check_value(
                slot,
                item,
                first=index == 0,
                shown=f"`{{{{ {shown} }}}}`",
                options=raw or isinstance(item, OptionValue),
            )
        except UnsafeValue as err:
            raise ValidationError(f"line {slot.line} of the command: {err}") from None
        words.append(item if raw or plain else quote_text(slot, item))
    return " ".join(words)


def _check_program(items: list[tuple[str, bool]], slot: Slot, shown: str) -> None:
    """A value that chooses what runs must be one of the programs its parameter's
    `validation.enum` lists (checked at `validate` to take their arguments as data)."""
    item = items[0][0] if len(items) == 1 else None
    if not isinstance(item, ChoiceValue) or program_choice_problem(item):
        raise ValidationError(f"line {slot.line} of the command: {program_message(shown)}")


def program_message(shown: str) -> str:
    return (
        f"`{{{{ {shown} }}}}` chooses what runs (a command's name, the command a wrapper such as `sudo`, "
        "`env` or `xargs` runs, or the script a shell, an interpreter or `source` runs), so a value "
        "could run anything — write the program literally and pick it with `case` on the value, or "
        "declare the parameter with `validation: {enum: [...]}` listing the programs it may name "
        "(or `type: bool`, which runs `true` or `false`)"
    )


_PLACEHOLDER = "__opsflow_value_{}__"
_PLACEHOLDERS = re.compile(r"__opsflow_value_(\d+)__")
_PENDING: contextvars.ContextVar[list[tuple[Any, Slot, str]] | None] = contextvars.ContextVar(
    "pending", default=None
)


def _place(text: str, pending: list[tuple[Any, Slot, str]]) -> str:
    """The rendered command `text`, whose values are placeholders, read again with bash's
    grammar: `{{ if }}` and `{{ range }}` blocks and `| raw` text are now resolved, so each
    value is checked and quoted for where it lands in the command that will run."""
    pieces = _PLACEHOLDERS.split(text)
    found = [int(n) for n in pieces[1::2]]
    if found != list(range(len(pending))):
        raise ValidationError("`| raw` text holds the reserved text `__opsflow_value_`")
    if not pending:
        return text
    parts: list[str | Hole] = []
    for index, piece in enumerate(pieces):
        parts.append(piece if index % 2 == 0 else Hole())
    shape = analyse(parts)
    if shape.problem:
        raise ValidationError(shape.problem)
    out = pieces[:1]
    for (value, static, shown), slot, literal in zip(pending, shape.slots, pieces[2::2], strict=True):
        out += [_quoted_words(value, dataclasses.replace(slot, line=static.line), shown), literal]
    return "".join(out)


def _items(value: Any) -> Iterator[tuple[str, bool]]:
    """The words of a value as text, and whether each is safe unquoted (numbers, booleans)."""
    if isinstance(value, Raw):
        yield str(value), True
    elif isinstance(value, bool):
        yield ("true" if value else "false"), True
    elif isinstance(value, int | float):
        yield str(value), True
    elif value is None:
        yield "", False
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _items(item)
    elif isinstance(value, Mapping):
        yield json.dumps(value), False
    else:
        yield (value if isinstance(value, str) else str(value)), False  # str(Undefined) raises


# Shell commands only: each value checked and quoted for its slot; identity everywhere else.
_SHELL_CONTEXT_FILTERS = {"_shq": _shell_value}


class Raw(str):
    """Text marked `| raw`: inserted into commands as-is, the explicit opt-out of quoting."""


class ChoiceValue(str):
    """A parameter's value from the list its `validation.enum` gives: the workflow's author
    wrote it, so it may name the program that runs (once checked to take its arguments as data)."""


class OptionValue(str):
    """A parameter's value that starts with `-` and that its `validation.pattern` allows:
    it may land where a command reads it as an option."""


def shell_quote(value: Any) -> str:
    """A value as shell words: each string quoted, a list as one word per item, `raw` as-is."""
    return _words(value, shlex.quote)


def _plain(value: Any) -> str:
    return _words(value, str)


def _words(value: Any, quote: Callable[[str], str]) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return quote("")
    if isinstance(value, list | tuple):
        return " ".join(_words(item, quote) for item in value)
    # str() of a StrictUndefined raises: a missing name never renders as ""
    return quote(json.dumps(value) if isinstance(value, Mapping) else str(value))


def _defined(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises the undefined-name error here
    return value


def _from_json(value: Any) -> Any:
    if isinstance(_defined(value), list | dict):
        return value  # already decoded upstream; decoding twice is harmless
    if not isinstance(value, str | bytes):
        raise ValidationError(f"fromJSON expects a JSON string, got {type(value).__name__}")
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValidationError(f"fromJSON: invalid JSON ({err.msg}): {str(value)[:60]!r}") from None


def _to_json(value: Any) -> str:
    return json.dumps(_defined(value), default=str)


def _join(items: Any, sep: str = " ") -> str:
    if isinstance(_defined(items), str):
        return items  # a single-valued parameter joins to itself
    return checked_join(sep, (_plain(item) for item in items))


def _values(value: Any) -> Any:
    # Go ranges over a map's values in key order; Jinja would yield the keys. Every Go `range`
    # loops through here or `_pairs`: each iteration counts against the render's bounds.
    return counted([value[k] for k in sorted(value)] if isinstance(value, Mapping) else value)


def _pairs(value: Any) -> Any:
    return counted(sorted(value.items()) if isinstance(value, Mapping) else enumerate(value))


def _go_name(name: Any) -> str:
    if not isinstance(name, str):
        return f"`[{name!r}]`"
    return f"`${name[3:]}`" if name.startswith("_v_") else f"`.{name}`"


def _suggest(name: Any, keys: list[str]) -> str:
    close = difflib.get_close_matches(str(name), keys, n=1)
    if close:
        return f" — did you mean {_go_name(close[0])}?"
    return f" (known: {', '.join(sorted(keys)[:15])})" if keys else ""


class _Undefined(jinja2.StrictUndefined):
    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        name, obj = self._undefined_name, self._undefined_obj
        if self._undefined_hint or name is None:
            return super()._undefined_message
        if obj is missing:
            return f"undefined name {_go_name(name)}" + _suggest(name, list(_KNOWN.get()))
        if isinstance(obj, Mapping):
            return f"undefined field {_go_name(name)}" + _suggest(name, [str(k) for k in obj])
        return f"{type(obj).__name__} value has no field {_go_name(name)}"


def _env(finalize: Any, shell: bool = False) -> LimitedSandbox:
    env = LimitedSandbox(
        undefined=_Undefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=finalize,
        block_start_string=JINJA_BLOCK[0],
        block_end_string=JINJA_BLOCK[1],
        comment_start_string=JINJA_COMMENT[0],
        comment_end_string=JINJA_COMMENT[1],
    )
    env.globals.update(join=_join, fromJSON=_from_json, toJSON=_to_json)
    env.globals.update(_values=_values, _pairs=_pairs)
    env.filters.update(fromJSON=_from_json, toJSON=_to_json, len=len, raw=lambda v: Raw(_plain(v)))
    env.filters.update(
        _SHELL_CONTEXT_FILTERS if shell else dict.fromkeys(_SHELL_CONTEXT_FILTERS, lambda v, *a: v)
    )
    env.limit_filters()
    return env


# finalize runs on every `{{ }}` value (never on literal text), so quoting cannot be forgotten
_PLAIN, _SHELL = _env(_plain), _env(shell_quote, shell=True)


@functools.lru_cache(maxsize=1024)
def _compiled(jinja: str, shell: bool) -> jinja2.Template:
    return (_SHELL if shell else _PLAIN).from_string(jinja)


@functools.lru_cache(maxsize=1024)
def _expression(expr: str) -> Any:
    return _PLAIN.compile_expression(expr, undefined_to_none=False)


@functools.lru_cache(maxsize=1024)
def _ast(jinja: str) -> nodes.Template:
    return _PLAIN.parse(jinja)


def _check_names(tree: nodes.Template) -> None:
    for node in tree.find_all(nodes.Filter):
        if node.name not in _PLAIN.filters:
            hint = difflib.get_close_matches(node.name, list(_PLAIN.filters), n=1)
            raise ValidationError(
                f"unknown filter `{node.name}`" + (f" — did you mean `{hint[0]}`?" if hint else "")
            )
    for node in tree.find_all(nodes.Test):
        if node.name not in _PLAIN.tests:
            raise ValidationError(f"unknown test `is {node.name}`")


@functools.lru_cache(maxsize=1024)
def _names(jinja: str) -> frozenset[str]:
    # find_undeclared_variables runs Jinja's code generator: worth doing once per source
    return frozenset(meta.find_undeclared_variables(_ast(jinja)) - set(_PLAIN.globals))


@contextmanager
def _reporting(where: str | None, source: str, context: Mapping[str, Any]) -> Iterator[None]:
    """Turn whatever a user's template does wrong into one ValidationError."""
    token = _KNOWN.set(tuple(str(k) for k in context))
    try:
        yield
    except ValidationError as err:
        raise ValidationError(err.message, where=err.where or where) from None
    except jinja2.TemplateSyntaxError as err:
        text = source.strip()
        at = f"`{text}`" if len(text) <= 80 and "\n" not in text else f"template line {err.lineno}"
        raise ValidationError(f"syntax error in {at}: {err.message}", where=where) from None
    except SecurityError as err:
        raise ValidationError(f"blocked by the template sandbox: {err}", where=where) from None
    except jinja2.TemplateError as err:
        raise ValidationError(str(err.message or err), where=where) from None
    except Exception as err:  # e.g. `'a' < 1` in a user's expression: report it, no traceback
        raise ValidationError(f"{type(err).__name__}: {err}", where=where) from None
    finally:
        _KNOWN.reset(token)


@dataclass(frozen=True)
class ShellValue:
    """One value of a shell command: where it lands, the names it reads, whether it is `| raw`."""

    slot: Slot
    names: frozenset[str]
    raw: bool
    shown: str  # the action's text, e.g. `.files`


@functools.lru_cache(maxsize=1024)
def _names_of(expr: str) -> frozenset[str]:
    return _names("{{ " + expr + " }}")


def _is_raw(expr: str) -> bool:
    tree = _ast("{{ " + expr + " }}")
    outputs = list(tree.find_all(nodes.Output))
    node = outputs[0].nodes[0] if outputs and outputs[0].nodes else None
    return isinstance(node, nodes.Filter) and node.name == "raw"


@dataclass(frozen=True)
class Template:
    """A compiled workflow value: `render` it for text, `evaluate` it for a value."""

    source: str
    line: int | None
    where: str | None
    _jinja: str = field(repr=False)  # the source translated to Jinja
    _expr: str | None = field(repr=False)  # the lone `{{ expr }}`, when that is all there is

    def names(self) -> frozenset[str]:
        return _names(self._jinja)

    def has_values(self) -> bool:
        """Whether any action outputs a value (control blocks and comments do not)."""
        return "{{" in self._jinja

    def shell_values(self) -> list[ShellValue]:
        """Where each value lands when this is a shell command; raises ValidationError where
        no quoting makes a value safe (backticks, `sh -c '...'`, a syntax bash's grammar cannot read)."""
        with _reporting(self.where, self.source, {}):
            shell = translate_shell(self.source)
        return [
            ShellValue(slot, _names_of(expr), _is_raw(expr), shown)
            for slot, expr, shown in zip(shell.slots, shell.exprs, shell.shown, strict=True)
        ]

    def output_names(self) -> frozenset[str]:
        found = set()
        for node in _ast(self._jinja).find_all((nodes.Getattr, nodes.Getitem)):
            if isinstance(node.node, nodes.Name) and node.node.name == "outputs":
                if isinstance(node, nodes.Getattr):
                    found.add(node.attr)
                elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                    found.add(node.arg.value)
        return frozenset(found)

    def render(self, context: Mapping[str, Any], *, shell: bool = False) -> str:
        with _reporting(self.where, self.source, context), budget():
            if not shell:
                return join_output(_compiled(self._jinja, False).generate(dict(context)))
            pending: list[tuple[Any, Slot, str]] = []
            token = _PENDING.set(pending)
            try:
                text = join_output(
                    _compiled(translate_shell(self.source).jinja, True).generate(dict(context))
                )
            finally:
                _PENDING.reset(token)
            return _place(text, pending)

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        if self._expr is None:
            return self.render(context)
        with _reporting(self.where, self.source, context), budget():
            return check_size(_defined(_expression(self._expr)(dict(context))))

    def truth(self, context: Mapping[str, Any]) -> bool:
        value = self.evaluate(context)
        if not isinstance(value, str):
            return bool(value)
        word = value.strip().lower()
        if word in _FALSE or word in _TRUE:
            return word in _TRUE
        if self._expr is not None:
            return True  # a lone expression yielding some other non-empty string, e.g. a name
        raise ValidationError(
            f"condition rendered {value.strip()!r} — expected true or false", where=self.where
        )


def compile_template(source: str, *, where: str | None = None, line: int | None = None) -> Template:
    """Translate and compile `source`; syntax errors and unsupported constructs are raised now."""
    with _reporting(where, source, {}):
        jinja, expr = translate(source)
        # Parse only: code generation waits for the first render, so validating a large file
        # stays fast. What the code generator would refuse (unknown filters and tests) is
        # checked on the parse tree instead, as is what the sandbox refuses whatever the values.
        _check_names(_ast(jinja))
        check_tree(_ast(jinja), _PLAIN)
        template = Template(source, line, where, jinja, expr)
        unset = sorted(n for n in template.names() if n.startswith("_v_"))
        if unset:
            raise ValidationError(f"variable {_go_name(unset[0])} is used before `:=` assigns it")
    return template


def is_template(value: object) -> bool:
    return isinstance(value, str) and "{{" in value
