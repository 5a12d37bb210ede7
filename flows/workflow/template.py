"""The workflow expression language: sandboxed Jinja2 that also reads a Go-template dialect.

Workflow files are written Go-template style (`{{ .environment }}`, `{{ if eq .a "b" }}`,
`{{ range .services }}`). Rather than run two engines, each source is translated once into Jinja
source and compiled by one sandboxed environment: plain Jinja keeps working, and there is a single
set of security rules and a single error path (everything surfaces as `ValidationError`).
"""

from __future__ import annotations

import contextvars
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
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import missing

from flows.errors import ValidationError
from flows.workflow.shellctx import (
    ACTION,
    ANSI,
    BACKTICK,
    COMMENT,
    DOUBLE,
    HEREDOC,
    LITERAL,
    SINGLE,
    UNQUOTED,
    quote_contexts,
)
from flows.workflow.units import FALSE_WORDS, TRUE_WORDS

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
    |(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`)
    |(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<var>\$\w*)
    |(?P<dot>\.(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)?)
    |(?P<name>[A-Za-z_]\w*)
    |(?P<op>:=|==|!=|<=|>=|//|\*\*|.)""",
    re.X | re.S,
)
# Only `{{ }}` is template syntax in a workflow file: `{%` and `{#` are plain text (awk and
# printf write `{%s`). Control blocks are written Go-style, `{{ if }}`, and translated to
# Jinja blocks with delimiters no YAML text can contain (YAML refuses NUL characters).
_OPEN = re.compile(r"\{\{(-?)\s*/\*.*?\*/\s*(-?)\}\}|\{\{", re.S)
_BLOCK = ("\x00%", "%\x00")
_COMMENT = ("\x00#", "#\x00")
# Finds the `}}` closing an action while stepping over string literals that may contain it.
_ACTION_END = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`|\}\}""", re.S)
_CLOSE = {"(": ")", "[": "]", "{": "}"}
_BINARY = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
# Go calls with a fixed arity, as Jinja format strings; `and`, `or`, `index`, `eq` are variadic
_FORMS = {f: f"({{0}} {op} {{1}})" for f, op in _BINARY.items()} | {
    "not": "(not ({0}))",
    "len": "({0} | length)",
    "join": "join({0}, {1})",
    "fromJSON": "fromJSON({0})",
    "toJSON": "toJSON({0})",
}
_GO_FUNCS = {*_FORMS, "and", "or", "index"}
_KEYWORDS = {"and", "or", "not", "in", "is", "if", "else"}
_TERM_START = {"str", "num", "dot", "root", "var", "name", "group"}
_LOOP_HINT = "filter first: `{{ range .xs }}{{ if .ok }}...{{ end }}{{ end }}`"
_INLINE_HINT = "inline the text; one workflow value cannot include another"
_UNSUPPORTED = {
    "with": "use `{{ if .x }}...{{ end }}` and write `.x.field` in full",
    **dict.fromkeys(("template", "define", "block"), _INLINE_HINT),
    **dict.fromkeys(("break", "continue"), _LOOP_HINT),
    "printf": "write the text around the value, e.g. `api:{{ .image_tag }}`",
    "call": "call helpers directly, e.g. `{{ join .services ',' }}`",
    "html": "use `{{ .x | escape }}`",
    "js": "use `{{ toJSON .x }}`",
    "urlquery": "use `{{ .x | urlencode }}`",
    "slice": "use `{{ index .xs 0 }}` or `{{ .xs[1:3] }}`",
}
_FUNCTIONS = {"printf", "call", "html", "js", "urlquery", "slice"}  # the rest are control words
_CONTROL = {"if", "else", "range", "end", *(_UNSUPPORTED.keys() - _FUNCTIONS)}
_TRUE, _FALSE = TRUE_WORDS, FALSE_WORDS
# Context keys of the render in progress, so an undefined name can suggest the closest one.
_KNOWN: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("known", default=())


def _unsupported(name: str) -> ValidationError:
    return ValidationError(f"`{name}` is not supported — {_UNSUPPORTED[name]}")


@dataclass
class _Tok:
    kind: str  # a _TOKEN group name, "attr" (`.x` after a value), "root" (`$.x`) or "group"
    text: str  # for a group: its opening bracket
    spaced: bool  # whitespace precedes it: Go juxtaposition is told apart from postfix this way
    items: list[_Tok] = field(default_factory=list)


def _parse(body: str) -> list[_Tok]:
    """Tokens of one action, brackets nested into groups, whitespace folded into `spaced`."""
    stack: list[list[_Tok]] = [[]]
    opens: list[_Tok] = []
    prev: _Tok | None = None
    spaced = True
    for m in _TOKEN.finditer(body):
        kind, text = m.lastgroup or "op", m.group()
        if kind == "ws":
            spaced = True
            continue
        if kind == "dot" and not spaced and prev and prev.kind not in ("op", "root"):
            if prev.kind == "var" and prev.text == "$":
                prev.kind, prev.text = "root", text
                continue
            kind = "attr"
        tok, spaced = _Tok(kind, text, spaced), False
        if kind == "op" and text in _CLOSE:
            tok.kind = "group"
            stack[-1].append(tok)
            stack.append(tok.items)
            opens.append(tok)
            prev = None
        elif kind == "op" and text in ")]}":
            if not opens or _CLOSE[opens[-1].text] != text:
                raise ValidationError(f"unbalanced `{text}` in `{body}`")
            stack.pop()
            prev = opens.pop()
        else:
            stack[-1].append(tok)
            prev = tok
    if opens:
        raise ValidationError(f"unclosed `{opens[-1].text}` in `{body}`")
    return stack[0]


def _emit(tok: _Tok, dots: list[str]) -> str:
    if tok.kind == "group":
        return tok.text + _expr(tok.items, dots) + _CLOSE[tok.text]
    if tok.kind == "str" and tok.text.startswith("`"):
        return json.dumps(tok.text[1:-1])  # Go raw string -> an equivalent Jinja literal
    if tok.kind == "var":
        if tok.text == "$":
            raise ValidationError("bare `$` is not supported — name a field, e.g. `$.environment`")
        return "_v_" + tok.text[1:]
    if tok.kind == "root":
        return tok.text[1:]
    if tok.kind == "dot":
        if dots:  # inside `range`, Go's dot is the current element
            return dots[-1] + ("" if tok.text == "." else tok.text)
        if tok.text == ".":
            raise ValidationError("bare `.` outside `range` — name a field: `{{ .environment }}`")
        return tok.text[1:]
    return tok.text


def _seq(toks: list[_Tok], dots: list[str]) -> str:
    out = []
    for i, tok in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if tok.kind == "name" and tok.text in _UNSUPPORTED and nxt and nxt.kind == "group":
            raise _unsupported(tok.text)
        out.append((" " if tok.spaced and i else "") + _emit(tok, dots))
    return "".join(out)


def _split(toks: list[_Tok], sep: str) -> list[list[_Tok]]:
    parts: list[list[_Tok]] = [[]]
    for tok in toks:
        if tok.kind == "op" and tok.text == sep:
            parts.append([])
        else:
            parts[-1].append(tok)
    return parts


def _expr(toks: list[_Tok], dots: list[str]) -> str:
    out = []
    for part in _split(toks, ","):
        head, *filters = _split(part, "|")
        stages = [_segment(head, dots, False)] + [_segment(f, dots, True) for f in filters]
        out.append(" | ".join(stages))
    return ", ".join(out)


def _terms(toks: list[_Tok], dots: list[str]) -> list[str] | None:
    """Juxtaposed Go arguments (`.a "b" (c)`) as Jinja expressions, or None if these are not."""
    terms: list[list[_Tok]] = []
    for i, tok in enumerate(toks):
        negative = tok.text == "-" and i + 1 < len(toks) and toks[i + 1].kind == "num"
        if tok.spaced or not terms:
            if not negative and (tok.kind not in _TERM_START or tok.text in _KEYWORDS):
                return None
            terms.append([tok])
        elif tok.kind in ("attr", "group") or terms[-1][-1].text == "-":
            terms[-1].append(tok)
        else:
            return None
    return [_seq(term, dots) for term in terms]


def _segment(toks: list[_Tok], dots: list[str], piped: bool) -> str:
    """One pipeline stage; a Go call (`eq .a "b"`, `| join ","`) becomes its Jinja form."""
    if not toks or toks[0].kind != "name" or (len(toks) > 1 and not toks[1].spaced):
        return _seq(toks, dots)
    name = toks[0].text
    args = _terms(toks[1:], dots) if len(toks) > 1 else None
    if name in _UNSUPPORTED and (piped or args):
        raise _unsupported(name)
    if args and piped:
        return f"{name}({', '.join(args)})"
    if args and name in _GO_FUNCS:
        return _go_call(name, args)
    return _seq(toks, dots)


def _go_call(name: str, a: list[str]) -> str:
    if name in ("and", "or"):
        return "(" + f" {name} ".join(f"({x})" for x in a) + ")"
    if name == "index" and len(a) > 1:
        return f"({a[0]})" + "".join(f"[{k}]" for k in a[1:])
    if name == "eq" and len(a) > 2:  # Go: `eq x a b` holds when x equals any of a, b
        return "(" + " or ".join(f"{a[0]} == {b}" for b in a[1:]) + ")"
    want = _FORMS[name].count("{") if name in _FORMS else 2
    if len(a) != want:
        raise ValidationError(f"`{name}` takes {want} argument(s), got {len(a)}")
    return _FORMS[name].format(*a)


def _control(kw: str, rest: list[_Tok], stack: list[tuple[str, str]]) -> str:
    """Jinja block statement for a Go control action; `stack` tracks open if/range blocks."""
    dots = [d for _, d in stack if d]
    if kw in _UNSUPPORTED:
        raise _unsupported(kw)
    if kw == "end":
        if not stack:
            raise ValidationError("`{{ end }}` has no matching `{{ if }}` or `{{ range }}`")
        return "endif" if stack.pop()[0] == "if" else "endfor"
    if kw == "else":
        if not stack:
            raise ValidationError("`{{ else }}` outside `{{ if }}` or `{{ range }}`")
        if not rest:
            stack[-1] = (stack[-1][0], "")  # a range's else branch sees the outer dot again
            return "else"
        if rest[0].text != "if" or len(rest) < 2 or stack[-1][0] != "if":
            raise ValidationError("write `{{ else if .x }}` inside `{{ if }}`, or `{{ else }}`")
        return "elif " + _expr(rest[1:], dots)
    if not rest:
        raise ValidationError(f"`{{{{ {kw} }}}}` needs an expression, e.g. `{{{{ {kw} .x }}}}`")
    if kw == "if":
        stack.append(("if", ""))
        return "if " + _expr(rest, dots)
    texts = [t.text for t in rest]
    if rest[0].kind == "var" and ":=" in texts:  # range $e := X / range $i, $e := X
        cut = texts.index(":=")
        names = [_emit(t, dots) for t in rest[:cut:2]]
        if len(names) > 2 or texts[1:cut:2] not in ([], [","]):
            raise ValidationError("write `{{ range $e := .xs }}` or `{{ range $i, $e := .xs }}`")
        source = _expr(rest[cut + 1 :], dots)
        stack.append(("range", names[-1]))
        helper = "_pairs" if len(names) == 2 else "_values"
        return f"for {', '.join(names)} in {helper}({source})"
    var = f"_dot{sum(kind == 'range' for kind, _ in stack) + 1}"
    source = _expr(rest, dots)
    stack.append(("range", var))
    return f"for {var} in _values({source})"


@functools.lru_cache(maxsize=1024)
def _translate(source: str) -> tuple[str, str | None]:
    """Jinja source for `source`, plus the Jinja expression if it is one lone `{{ }}` action."""
    out: list[str] = []
    exprs: list[str] = []
    lone = True  # no text (other than whitespace) or block besides a single expression action
    stack: list[tuple[str, str]] = []
    contexts = _quote_contexts(source)
    pos = action = 0
    while m := _OPEN.search(source, pos):
        lone = lone and not source[pos : m.start()].strip()
        out.append(source[pos : m.start()])
        pos = m.end()
        context = contexts[action] if action < len(contexts) else UNQUOTED
        action += 1
        if m.group() != "{{":
            lone = False
            go_comment = m.group().startswith("{{")
            out.append(f"{_COMMENT[0]}{m.group(1)} {m.group(2)}{_COMMENT[1]}" if go_comment else m.group())
            continue
        close = next((c for c in _ACTION_END.finditer(source, pos) if c.group() == "}}"), None)
        if close is None:
            raise ValidationError(f"`{{{{` is never closed: `{source[m.start() : m.start() + 60]}`")
        body, pos = source[m.end() : close.start()], close.end()
        lt, rt = ("-" if body.startswith("-") else ""), ("-" if body.endswith("-") else "")
        toks = _parse(body[len(lt) : len(body) - len(rt)])
        if not toks:
            raise ValidationError("empty `{{ }}` action")
        first, dots = toks[0], [d for _, d in stack if d]
        if first.kind == "name" and first.text in _CONTROL and (len(toks) == 1 or toks[1].spaced):
            lone = False
            out.append(f"{_BLOCK[0]}{lt} {_control(first.text, toks[1:], stack)} {rt}{_BLOCK[1]}")
        elif first.kind == "var" and len(toks) > 2 and toks[1].text in (":=", "="):
            lone = False
            out.append(f"{_BLOCK[0]}{lt} set {_emit(first, dots)} = {_expr(toks[2:], dots)} {rt}{_BLOCK[1]}")
        else:
            exprs.append(_expr(toks, dots))
            # Outside quotes the shell finalizer quotes the value; elsewhere a filter escapes it
            # for its context (and does nothing outside shell commands).
            kind, _, delimiter = context.partition(":")
            quoting = f"_q_{kind}({json.dumps(delimiter)})" if delimiter else f"_q_{kind}"
            shown = exprs[-1] if context == UNQUOTED else f"({exprs[-1]}) | {quoting}"
            out.append(f"{{{{{lt} {shown} {rt}}}}}")
    if stack:
        raise ValidationError(f"`{{{{ {stack[-1][0]} }}}}` is never closed — add `{{{{ end }}}}`")
    lone = lone and len(exprs) == 1 and not source[pos:].strip()
    return "".join(out) + source[pos:], exprs[0] if lone else None


def _quote_contexts(source: str) -> list[str]:
    """The shell quoting context of every action of `source`, in order."""
    spans, pos = [], 0
    while m := _OPEN.search(source, pos):
        if m.group() != "{{":
            spans.append((m.start(), m.end()))
            pos = m.end()
            continue
        close = next((c for c in _ACTION_END.finditer(source, m.end()) if c.group() == "}}"), None)
        if close is None:
            break  # the translation reports it
        spans.append((m.start(), close.end()))
        pos = close.end()
    skeleton, last = [], 0
    for start, end in spans:
        skeleton += [source[last:start], ACTION]
        last = end
    return quote_contexts("".join(skeleton) + source[last:])


def _escape_double(text: str) -> str:
    return re.sub(r'([\\"$`])', r"\\\1", text)


def _escape_heredoc(text: str) -> str:
    return re.sub(r"([\\$`])", r"\\\1", text)


def _refuse(where: str, instead: str) -> Callable[..., str]:
    def refuse(value: Any, *args: Any) -> str:
        raise ValidationError(f"a template value inside {where} cannot be quoted safely — {instead}")

    return refuse


def _in_document(escape: Callable[[str], str]) -> Callable[[Any, str], str]:
    def quote(value: Any, delimiter: str) -> str:
        text = _words(value, escape)
        if any(line.lstrip("\t") == delimiter for line in text.split("\n")):
            raise ValidationError(
                f"a template value contains the line `{delimiter}`, which would end its here-document"
            )
        return Raw(text)

    return quote


# Per-context quoting for shell commands; identity everywhere else.
_SHELL_CONTEXT_FILTERS = {
    f"_q_{DOUBLE}": lambda v: Raw(_words(v, _escape_double)),
    f"_q_{SINGLE}": lambda v: Raw(_words(v, lambda s: s.replace("'", "'\\''"))),
    f"_q_{HEREDOC}": _in_document(_escape_heredoc),
    f"_q_{LITERAL}": _in_document(str),
    f"_q_{COMMENT}": lambda v: Raw(" ".join(_plain(v).split())),  # a newline would end the comment
    f"_q_{ANSI}": _refuse("$'...'", "move it out of the quotes"),
    f"_q_{BACKTICK}": _refuse("backticks", "write $( ... ) instead"),
}


class Raw(str):
    """Text marked `| raw`: inserted into commands as-is, the explicit opt-out of quoting."""


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
    return sep.join(str(_plain(item)) for item in items)


def _values(value: Any) -> Any:
    # Go ranges over a map's values in key order; Jinja would yield the keys
    return [value[k] for k in sorted(value)] if isinstance(value, Mapping) else value


def _pairs(value: Any) -> Any:
    return sorted(value.items()) if isinstance(value, Mapping) else enumerate(value)


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


def _env(finalize: Any, shell: bool = False) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=_Undefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=finalize,
        block_start_string=_BLOCK[0],
        block_end_string=_BLOCK[1],
        comment_start_string=_COMMENT[0],
        comment_end_string=_COMMENT[1],
    )
    env.globals.update(join=_join, fromJSON=_from_json, toJSON=_to_json)
    env.globals.update(_values=_values, _pairs=_pairs)
    env.filters.update(fromJSON=_from_json, toJSON=_to_json, len=len, raw=lambda v: Raw(_plain(v)))
    env.filters.update(
        _SHELL_CONTEXT_FILTERS if shell else dict.fromkeys(_SHELL_CONTEXT_FILTERS, lambda v, *a: v)
    )
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

    def quote_contexts(self) -> list[str]:
        """The shell quoting context of each action, in order (see shellctx)."""
        return _quote_contexts(self.source)

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
        with _reporting(self.where, self.source, context):
            return _compiled(self._jinja, shell).render(dict(context))

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        if self._expr is None:
            return self.render(context)
        with _reporting(self.where, self.source, context):
            return _defined(_expression(self._expr)(dict(context)))

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
        jinja, expr = _translate(source)
        # Parse only: code generation waits for the first render, so validating a large file
        # stays fast. What the code generator would refuse (unknown filters and tests) is
        # checked on the parse tree instead.
        _check_names(_ast(jinja))
        template = Template(source, line, where, jinja, expr)
        unset = sorted(n for n in template.names() if n.startswith("_v_"))
        if unset:
            raise ValidationError(f"variable {_go_name(unset[0])} is used before `:=` assigns it")
    return template


def is_template(value: object) -> bool:
    return isinstance(value, str) and "{{" in value
