"""The Go-template dialect of workflow files, translated once into Jinja source. Pure.

`{{ .environment }}`, `{{ join .services ',' }}`, `{{ if and (eq .a "b") .c }}...{{ end }}` and
`{{ range $s := .services }}` become Jinja that the one sandboxed engine (template.py) runs;
plain Jinja expressions inside `{{ }}` pass through. A shell command's translation also
puts each value through the quoting its place needs (flows/shellquote.py says where each lands).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field

from flows.errors import ValidationError
from flows.shellquote import Hole, Slot, analyse

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
JINJA_BLOCK = ("\x00%", "%\x00")
JINJA_COMMENT = ("\x00#", "#\x00")
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


@dataclass(frozen=True)
class _Value:
    """A value action of the translated source: its Jinja expression and whitespace trimming."""

    expr: str
    lt: str
    rt: str
    shown: str  # the action's text between the braces, for messages


@dataclass(frozen=True)
class _Translation:
    out: tuple[str | _Value, ...]  # Jinja text, with each value action still to be written
    parts: tuple[str | Hole, ...]  # the source as text and holes, for the shell analysis
    blocks: tuple[tuple[int, int], ...]  # hole indexes: a block's opening and its else/end
    lone: str | None


@functools.lru_cache(maxsize=1024)
def _translate(source: str) -> _Translation:
    out: list[str | _Value] = []
    parts: list[str | Hole] = []
    blocks: list[tuple[int, int]] = []
    opened: list[int] = []  # hole index of each open if/range
    holes = 0
    exprs: list[str] = []
    lone = True  # no text (other than whitespace) or block besides a single expression action
    stack: list[tuple[str, str]] = []
    pos = 0

    def hole(value: bool, lt: str, rt: str) -> int:
        nonlocal holes
        parts.append(Hole(value, bool(lt), bool(rt)))
        holes += 1
        return holes - 1

    while m := _OPEN.search(source, pos):
        lone = lone and not source[pos : m.start()].strip()
        out.append(source[pos : m.start()])
        parts.append(source[pos : m.start()])
        pos = m.end()
        if m.group() != "{{":
            lone = False
            go_comment = m.group().startswith("{{")
            out.append(
                f"{JINJA_COMMENT[0]}{m.group(1)} {m.group(2)}{JINJA_COMMENT[1]}" if go_comment else m.group()
            )
            hole(False, m.group(1) or "", m.group(2) or "")
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
            out.append(f"{JINJA_BLOCK[0]}{lt} {_control(first.text, toks[1:], stack)} {rt}{JINJA_BLOCK[1]}")
            index = hole(False, lt, rt)
            if first.text in ("if", "range"):
                opened.append(index)
            elif opened and first.text in ("else", "end"):
                blocks.append((opened[-1], index))
                if first.text == "end":
                    opened.pop()
        elif first.kind == "var" and len(toks) > 2 and toks[1].text in (":=", "="):
            lone = False
            out.append(
                f"{JINJA_BLOCK[0]}{lt} set {_emit(first, dots)} = {_expr(toks[2:], dots)} {rt}{JINJA_BLOCK[1]}"
            )
            hole(False, lt, rt)
        else:
            exprs.append(_expr(toks, dots))
            out.append(_Value(exprs[-1], lt, rt, " ".join(body[len(lt) : len(body) - len(rt)].split())))
            hole(True, lt, rt)
    if stack:
        raise ValidationError(f"`{{{{ {stack[-1][0]} }}}}` is never closed — add `{{{{ end }}}}`")
    out.append(source[pos:])
    parts.append(source[pos:])
    lone = lone and len(exprs) == 1 and not source[pos:].strip()
    return _Translation(tuple(out), tuple(parts), tuple(blocks), exprs[0] if lone else None)


@functools.lru_cache(maxsize=1024)
def translate(source: str) -> tuple[str, str | None]:
    """Jinja source for `source`, plus the Jinja expression if it is one lone `{{ }}` action."""
    done = _translate(source)
    text = "".join(p if isinstance(p, str) else f"{{{{{p.lt} {p.expr} {p.rt}}}}}" for p in done.out)
    return text, done.lone


@dataclass(frozen=True)
class ShellTranslation:
    """`source` as a shell command: Jinja source whose every value goes through the quoting
    filter `_shq` for its slot, and per value action its slot and Jinja expression."""

    jinja: str
    slots: tuple[Slot, ...]
    exprs: tuple[str, ...]
    shown: tuple[str, ...]


@functools.lru_cache(maxsize=1024)
def translate_shell(source: str) -> ShellTranslation:
    """Like `translate`, for a shell command; refuses values no quoting can make safe."""
    done = _translate(source)
    shape = analyse(done.parts)
    if shape.problem:
        raise ValidationError(shape.problem)
    for opening, other in done.blocks:
        if shape.nesting[opening] != shape.nesting[other]:
            holes = [i for i, p in enumerate(done.parts) if isinstance(p, Hole)]
            line = 1 + sum(p.count("\n") for p in done.parts[: holes[opening]] if isinstance(p, str))
            raise ValidationError(
                f"line {line} of the command: an `{{{{ if }}}}` or `{{{{ range }}}}` block opens or closes "
                "quotes, a substitution or a here-document, so values after it would land somewhere "
                "else than checked — keep each block's text balanced"
            )
    values = [p for p in done.out if isinstance(p, _Value)]
    slots = iter(shape.slots)
    text = "".join(
        p
        if isinstance(p, str)
        else f"{{{{{p.lt} ({p.expr}) | _shq({json.dumps(_slot_json(next(slots)))}, {json.dumps(p.shown)}) {p.rt}}}}}"
        for p in done.out
    )
    return ShellTranslation(text, shape.slots, tuple(v.expr for v in values), tuple(v.shown for v in values))


def _slot_json(slot: Slot) -> str:
    return json.dumps(dataclasses.asdict(slot), separators=(",", ":"))
