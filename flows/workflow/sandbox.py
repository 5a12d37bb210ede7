"""What one template may reach and what it may cost. Pure.

Templates run in Jinja's immutable sandbox (no attribute starting with `_`, no mutation of
lists and dicts); on top of that, every render has bounds, so a workflow file cannot stall
`validate`, `plan` or a run:

- values a template builds (`'x' * N`, `[x] * N`, `2 ** N`, `'%9999999s' % x`, `~`, `join`,
  `center`, `replace`, ...) may hold at most MAX_VALUE characters/items, checked *before* the
  operation allocates them; a filter that collects what another filter yields (`list`, `join`,
  `sort`, `sum(start=[])`...) counts as it collects, so `map` and `select` chains cannot pile up
  items past the bound either;
- bytes are not template values (`'x'.encode()` is refused): every bound counts text;
- a render's output is at most MAX_OUTPUT characters, counted as it is produced;
- a render takes at most MAX_STEPS steps (loop iterations, calls, filter and test calls, each
  item a filter callback sees, attribute reads, operators) and MAX_SECONDS, checked at each
  step: no single step does more than a bounded value's worth of work, so the bound holds
  without a thread or a signal per render (renders happen in Prefect's worker threads too).

The same rules run on the template's syntax tree when it is compiled: what the sandbox would
refuse whatever the values (`''.__class__`, `self`, `'x' * 1000000000`) fails `validate` too.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import make_attrgetter
from jinja2.nodes import EvalContext, Impossible
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg, pass_environment

from flows.errors import ValidationError

#: Characters (strings) or items (lists, dicts, counted through nesting) in one value.
MAX_VALUE = 1024 * 1024
#: Characters one render may produce.
MAX_OUTPUT = 1024 * 1024
#: Loop iterations, calls, attribute reads and operators of one render.
MAX_STEPS = 1_000_000
#: Wall-clock seconds one render may take.
MAX_SECONDS = 5.0
#: Bits of an integer a template may compute (10**4000 and beyond are not configuration).
MAX_INT_BITS = 16 * 1024
#: Items `range()` may give.
MAX_RANGE = 100_000
# Globals Jinja adds that workflow templates have no use for (lipsum builds text on demand).
UNUSED_GLOBALS = ("lipsum", "cycler", "joiner", "namespace")


class TemplateLimit(ValidationError):
    """A template went past one of the bounds above (exit 3)."""


class _Budget:
    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


@contextmanager
def budget() -> Iterator[None]:
    """The bounds of one render (nested renders share the outer one's)."""
    if _budget.get() is not None:
        yield
        return
    token = _budget.set(_Budget())
    try:
        yield
    finally:
        _budget.reset(token)


def step() -> None:
    """Count one step of the render in progress; past MAX_STEPS or MAX_SECONDS it stops."""
    current = _budget.get()
    if current is None:
        return
    current.steps += 1
    if current.steps > MAX_STEPS:
        raise TemplateLimit(f"the template takes more than {MAX_STEPS:,} steps — loop over less")
    # every step: one step may cost up to a full-size value's work (a sort, an `in` test)
    if time.monotonic() > current.deadline:
        raise TemplateLimit(f"the template takes longer than {MAX_SECONDS:g} s to render — loop over less")


def counted(items: Iterable[Any]) -> Iterator[Any]:
    """`items`, one step each: how loops (Go `range`) are bounded."""
    for item in items:
        step()
        yield item


_SCALARS = frozenset({bool, float, type(None)})
_BYTES = (bytes, bytearray, memoryview)


def _counts_one(item: Any) -> bool:
    kind = type(item)
    return kind in _SCALARS or (kind is int and item.bit_length() <= 64)


def size(value: Any, limit: int = MAX_VALUE) -> int:
    """Characters of a string, items of a collection counted through nesting (a list that
    holds one long string N times counts N times its length); stops counting past `limit`."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            total += len(item)
        elif kind is list or kind is tuple:
            # plain items (numbers, booleans) count one each without a trip through the loop
            nested = [x for x in item if not _counts_one(x)] if len(item) <= limit else []
            total += 1 + len(item) - len(nested)
            stack.extend(nested)
        elif isinstance(item, _BYTES):
            raise _no_bytes()
        elif isinstance(item, str):
            total += len(item)
        elif isinstance(item, Mapping):
            total += 1 + len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 1
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 64:
            total += item.bit_length() // 3  # about its decimal digits
        else:
            total += 1
    return total


def _too_big(what: str) -> TemplateLimit:
    return TemplateLimit(f"{what} would be over {MAX_VALUE:,} characters or items — build less")


def _no_bytes() -> TemplateLimit:
    return TemplateLimit("bytes values are not supported in templates — work with text")


def collect(items: Iterable[Any], what: str) -> list[Any]:
    """`list(items)`, one step per item, refused as soon as the items pass MAX_VALUE."""
    out: list[Any] = []
    total = 0
    for item in counted(items):
        total += size(item)
        if total > MAX_VALUE:
            raise _too_big(what)
        out.append(item)
    return out


def check_size(value: Any, what: str = "a template value") -> Any:
    if isinstance(value, _BYTES):
        raise _no_bytes()
    if size(value) > MAX_VALUE:
        raise _too_big(what)
    return value


def checked_join(separator: str, items: Iterable[Any]) -> str:
    """`separator.join(str(item) ...)`, refused before it would exceed MAX_VALUE."""
    texts: list[str] = []
    total = -len(separator)
    for item in counted(items):
        texts.append(str(item))
        total += len(texts[-1]) + len(separator)
        if total > MAX_VALUE:
            raise _too_big("a joined text")
    return separator.join(texts)


# --- operators ------------------------------------------------------------------------------

_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _check_percent_format(text: str) -> None:
    for width, precision in _PERCENT.findall(text):
        for number in (width, precision):
            if number == "*":
                raise TemplateLimit(
                    "`*` widths in % formats are not supported in templates — write the number"
                )
            if number and int(number) > MAX_VALUE:
                raise _too_big("a formatted text")


def _check_brace_format(text: str) -> None:
    for _, _, spec, _ in string.Formatter().parse(text):
        if not spec:
            continue
        if "{" in spec:
            raise TemplateLimit(
                "nested `{}` in a format spec is not supported in templates — write the number"
            )
        if any(int(number) > MAX_VALUE for number in re.findall(r"\d+", spec)):
            raise _too_big("a formatted text")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if isinstance(left, _BYTES) or isinstance(right, _BYTES):
        raise _no_bytes()
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if _is_count(count) and isinstance(seq, str | bytes | list | tuple):
                if count > 0 and size(seq) * count > MAX_VALUE:
                    raise _too_big("a repeated value")
                return
        if _is_count(left) and _is_count(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateLimit(f"a product over {MAX_INT_BITS:,} bits is not configuration")
    elif operator == "**":
        pow_ints = _is_count(left) and _is_count(right) and abs(left) > 1 and right > 0
        if pow_ints and left.bit_length() * right > MAX_INT_BITS:
            raise TemplateLimit(f"a power over {MAX_INT_BITS:,} bits is not configuration")
    elif operator == "+":
        sequences = isinstance(left, str | bytes | list | tuple) and isinstance(
            right, str | bytes | list | tuple
        )
        if sequences and size(left) + size(right) > MAX_VALUE:
            raise _too_big("a concatenation")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left)


# --- calls: methods and filters that amplify their input ---------------------------------------


def _check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str | bytes):
        return
    name = getattr(method, "__name__", "")
    values = [*args, *kwargs.values()]
    if name in ("ljust", "rjust", "center", "zfill") and values and _is_count(values[0]):
        if values[0] > MAX_VALUE:
            raise _too_big(f"`{name}` of a text")
    elif name == "expandtabs" and values and _is_count(values[0]):
        if values[0] * (owner.count("\t" if isinstance(owner, str) else b"\t") + 1) > MAX_VALUE:
            raise _too_big("`expandtabs` of a text")
    elif name == "replace" and len(values) >= 2:
        _check_replace(owner, values[0], values[1])
    elif name == "translate" and values and isinstance(values[0], Mapping):
        longest = max((size(v) for v in values[0].values()), default=1)
        if len(owner) * max(longest, 1) > MAX_VALUE:
            raise _too_big("`translate` of a text")


def _checked_arguments(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """`args` for calling `func` once it is known not to build too much (a `str.join` gets its
    items materialised, so the check and the join see the same ones)."""
    owner = getattr(func, "__self__", None)
    if isinstance(owner, str) and getattr(func, "__name__", "") == "join" and len(args) == 1:
        items = collect(args[0], "a joined text")
        if size(items) + len(owner) * len(items) > MAX_VALUE:
            raise _too_big("a joined text")
        args = (items,)
    _check_str_method(func, args, kwargs)
    return args


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if (
        not isinstance(text, str | bytes)
        or not isinstance(old, str | bytes)
        or not isinstance(new, str | bytes)
    ):
        return
    places = text.count(old) if old else len(text) + 1
    if len(text) + places * len(new) > MAX_VALUE:
        raise _too_big("a replacement")


def _filter_checks(arguments: Mapping[str, Any], name: str) -> None:
    """Refuse a filter call whose result would be too big, from its arguments alone."""
    a = arguments
    if name in ("center", "indent"):
        width = a.get("width")
        text = str(a.get("value", a.get("s", "")))
        pad = width if _is_count(width) else len(str(width or ""))
        if len(text) + pad * (text.count("\n") + 1) > MAX_VALUE:
            raise _too_big(f"`{name}` of a text")
    elif name == "replace":
        _check_replace(str(a.get("s", "")), a.get("old"), a.get("new"))
    elif name == "format":
        _check_percent_format(str(a.get("value", "")))
    elif name == "wordwrap":
        text, wrap = str(a.get("s", "")), str(a.get("wrapstring") or "\n")
        width = a.get("width", 79)
        lines = len(text) // max(width if _is_count(width) else 1, 1) + text.count("\n") + 1
        if len(text) + lines * len(wrap) > MAX_VALUE:
            raise _too_big("`wordwrap` of a text")
    elif name == "batch" and a.get("fill_with") is not None:
        if _is_count(a.get("linecount")) and a["linecount"] > MAX_VALUE:
            raise _too_big("a batch")
    elif name == "slice" and _is_count(a.get("slices")) and a["slices"] > MAX_RANGE:
        raise TemplateLimit(f"`slice` into more than {MAX_RANGE:,} parts is not supported")


# Filters that pass what they are given on one item at a time; the others collect it first.
_STREAMING = frozenset({"map", "select", "reject", "selectattr", "rejectattr", "first", "min", "max", "sum"})


def _bounded_argument(name: str, value: Any) -> Any:
    """An argument a filter will read: an iterator (what `map`, `select`, `batch` yield) is
    counted per item, and collected with the size bound when the filter collects it anyway."""
    if isinstance(value, _BYTES):
        raise _no_bytes()
    if not isinstance(value, Iterator):
        return value
    if name in _STREAMING:
        return counted(value)
    return iter(collect(value, f"what `{name}` collects"))


# Filters whose arguments are checked before they run (_filter_checks, join).
_CHECKED = frozenset({"center", "indent", "replace", "format", "wordwrap", "batch", "slice", "join"})


def _needs_bounds(value: Any) -> bool:
    return isinstance(value, Iterator | bytes | bytearray | memoryview)


def limited_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` (a filter), counted as a step, refused when its result would be too big."""
    if getattr(func, "_limited", False):
        return func
    try:
        signature: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):  # pragma: no cover - every Jinja filter has one
        signature = None
    # Jinja's sync/async filters (`list`, `select`, `map`...) take an evaluation context first
    # that their signature (the sync function's) does not show.
    hidden = int(_PassArg.from_obj(func) is not None and _PassArg.from_obj(inspect.unwrap(func)) is None)

    @functools.wraps(func)
    def limited(*args: Any, **kwargs: Any) -> Any:
        step()
        first, args = args[:hidden], args[hidden:]
        bound = None
        if signature is not None and (name in _CHECKED or any(map(_needs_bounds, (*args, *kwargs.values())))):
            with contextlib.suppress(TypeError):  # the filter itself says what is wrong with the call
                bound = signature.bind(*args, **kwargs)
        if bound is not None:
            for key, value in bound.arguments.items():
                bound.arguments[key] = _bounded_argument(name, value)
            if name == "join" and "value" in bound.arguments:
                # materialised once, so the check and the join see the same items
                items = collect(bound.arguments["value"], "a joined text")
                bound.arguments["value"] = items
                if size(items) + len(str(bound.arguments.get("d", ""))) * len(items) > MAX_VALUE:
                    raise _too_big("a joined text")
            args, kwargs = bound.args, bound.kwargs
            _filter_checks(bound.arguments, name)
        return check_size(func(*first, *args, **kwargs), f"the result of `{name}`")

    limited._limited = True  # type: ignore[attr-defined]
    return limited


def limited_test(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` (a test), counted as a step: `select` and `reject` call one per item."""
    if getattr(func, "_limited", False):
        return func

    @functools.wraps(func)
    def limited(*args: Any, **kwargs: Any) -> Any:
        step()
        return func(*args, **kwargs)

    limited._limited = True  # type: ignore[attr-defined]
    return limited


@pass_environment
def bounded_sum(environment: Any, iterable: Any, attribute: str | int | None = None, start: Any = 0) -> Any:
    """Jinja's `sum`, one step per item; lists (`sum(start=[])`) are joined in one pass, and
    refused as soon as they pass MAX_VALUE, instead of copied once per item."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    if isinstance(start, (str, *_BYTES)):
        raise TypeError("sum() can't sum strings [use join instead]")
    if not isinstance(start, list | tuple):
        total = start
        for item in counted(iterable):
            _check_binop("+", total, item)
            total = total + item
        return total
    joined, count = list(start), size(start)
    for item in counted(iterable):
        if not isinstance(item, type(start)):
            kind = type(start).__name__
            raise TypeError(f'can only concatenate {kind} (not "{type(item).__name__}") to {kind}')
        count += size(item)
        if count > MAX_VALUE:
            raise _too_big("a sum of lists")
        joined.extend(item)
    return type(start)(joined)


def limited_range(*args: int) -> range:
    step()
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateLimit(f"range() of more than {MAX_RANGE:,} numbers is not supported in templates")
    return numbers


# --- the environment --------------------------------------------------------------------------


class _LimitedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 - Jinja's naming
        # `a ~ b` builds a string outside the operator hooks: route it through a bounded join.
        self.write("environment.limited_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with the bounds of this module."""

    code_generator_class = _LimitedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in UNUSED_GLOBALS:
            self.globals.pop(name, None)
        self.globals["range"] = limited_range
        self.filters["sum"] = bounded_sum
        self.limit_filters()

    def limit_filters(self) -> None:
        """Bound the filters (and tests) registered since construction too (call after adding some)."""
        self.filters.update({name: limited_filter(name, f) for name, f in self.filters.items()})
        self.tests.update({name: limited_test(f) for name, f in self.tests.items()})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, _BYTES) or (isinstance(obj, str) and attr == "encode"):
            raise _no_bytes()
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        step()
        _check_binop(operator, left, right)
        return check_size(self.binop_table[operator](left, right), "an operator's result")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        step()
        args = _checked_arguments(__obj, args, kwargs)
        return check_size(super().call(__context, __obj, *args, **kwargs), "a call's result")

    def getattr(self, obj: Any, attribute: str) -> Any:
        step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        step()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is not None:
            _check_brace_format(value.__self__)
        return wrapper

    def limited_concat(self, parts: Iterable[Any]) -> str:
        return checked_join("", parts)


def join_output(pieces: Iterable[str]) -> str:
    """A render's output, stopped as soon as it passes MAX_OUTPUT."""
    out: list[str] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > MAX_OUTPUT:
            raise TemplateLimit(f"the template renders more than {MAX_OUTPUT:,} characters")
        out.append(piece)
    return "".join(out)


# --- static checks ----------------------------------------------------------------------------


def check_tree(tree: nodes.Template, env: LimitedSandbox) -> None:
    """Refuse now what every render of `tree` would refuse: reaching internals (names starting
    with `_`, `self`) and constant expressions past the bounds (`'x' * 1000000000`)."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Filter)):
        blocked = _blocked(node)
        if blocked:
            # `''.__class__.__mro__`: name the first step the sandbox refuses, `__class__`
            inner = getattr(node, "node", None)
            while isinstance(inner, nodes.Getattr | nodes.Getitem) and _blocked(inner):
                blocked, inner = _blocked(inner), inner.node
            raise ValidationError(f"blocked by the template sandbox: {blocked}")
    context = EvalContext(env)
    memo: dict[int, Any] = {}  # each node is computed once, however deep the expression nests
    with budget():
        for node in tree.find_all((nodes.BinExpr, nodes.Concat, nodes.Filter, nodes.Call)):
            try:
                _fold(node, env, context, memo)
            except TemplateLimit:
                raise
            except (Impossible, SecurityError, Exception):  # decided by values, at render time
                continue


# Filters whose string arguments name attributes (`attr('x')`, `map(attribute='a.b')`).
_ATTRIBUTE_FILTERS = {
    "attr",
    "selectattr",
    "rejectattr",
    "map",
    "sort",
    "groupby",
    "sum",
    "unique",
    "min",
    "max",
}
_FORMAT_FIELD = re.compile(r"\{[^{}]*[.\[]_")


def _blocked(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        if node.attr.startswith("__"):
            return f"`.{node.attr}`: names starting with `_` are not reachable"
        if node.attr.startswith("_"):
            return f"`.{node.attr}`: names starting with `_` are not reachable (a data key: write `['{node.attr}']`)"
        formats = node.attr in ("format", "format_map") and isinstance(node.node, nodes.Const)
        if formats and _FORMAT_FIELD.search(str(node.node.value)):  # type: ignore[attr-defined]
            return f"{node.node.value!r}: format fields cannot reach names starting with `_`"  # type: ignore[attr-defined]
    if isinstance(node, nodes.Getitem) and _private(node.arg, "__"):
        return f"`[{node.arg.value!r}]`: names starting with `__` are not reachable"  # type: ignore[attr-defined]
    if isinstance(node, nodes.Name) and node.name == "self" and node.ctx == "load":
        return "`self` is not available in workflow templates"
    if isinstance(node, nodes.Filter) and node.name in _ATTRIBUTE_FILTERS:
        for arg in [*node.args, *(kw.value for kw in node.kwargs)]:
            if _private(arg, "_"):
                return f"`{node.name}({arg.value!r})`: names starting with `_` are not reachable"  # type: ignore[attr-defined]
    return None


def _private(node: nodes.Node, prefix: str) -> bool:
    """A constant attribute name (or dotted path) with a part starting with `prefix`."""
    return (
        isinstance(node, nodes.Const)
        and isinstance(node.value, str)
        and any(part.startswith(prefix) for part in node.value.split("."))
    )


def _fold(node: nodes.Node, env: LimitedSandbox, context: EvalContext, memo: dict[int, Any]) -> Any:
    """The value of a constant expression, computed with the bounds; Impossible otherwise."""
    if id(node) not in memo:
        try:
            memo[id(node)] = (True, _fold_once(node, env, context, memo))
        except TemplateLimit:
            raise
        except Exception as err:  # noqa: BLE001 - kept to be raised again for the enclosing nodes
            memo[id(node)] = (False, err)
    done, value = memo[id(node)]
    if not done:
        raise value
    return value


def _fold_once(node: nodes.Node, env: LimitedSandbox, context: EvalContext, memo: dict[int, Any]) -> Any:
    if isinstance(node, nodes.BinExpr) and node.operator in env.intercepted_binops:
        return env.call_binop(
            None, node.operator, _fold(node.left, env, context, memo), _fold(node.right, env, context, memo)
        )
    if isinstance(node, nodes.Concat):
        return env.limited_concat([_fold(part, env, context, memo) for part in node.nodes])
    if isinstance(node, nodes.List):
        return [_fold(item, env, context, memo) for item in node.items]
    if isinstance(node, nodes.Tuple):
        return tuple(_fold(item, env, context, memo) for item in node.items)
    if isinstance(node, nodes.Filter | nodes.Call) and (node.dyn_args or node.dyn_kwargs):
        raise Impossible()
    if isinstance(node, nodes.Filter) and node.node is not None:
        func = env.filters.get(node.name)
        pass_arg = _PassArg.from_obj(func) if func is not None else None
        if func is None or pass_arg is _PassArg.context:
            raise Impossible()
        first = {_PassArg.eval_context: [context], _PassArg.environment: [env]}.get(pass_arg, [])  # type: ignore[arg-type]
        args = [_fold(arg, env, context, memo) for arg in node.args]
        kwargs = {kw.key: _fold(kw.value, env, context, memo) for kw in node.kwargs}
        return func(*first, _fold(node.node, env, context, memo), *args, **kwargs)
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range":
        if node.kwargs:
            raise Impossible()
        return limited_range(*[_fold(arg, env, context, memo) for arg in node.args])
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):  # 'x'.ljust(9), '{}'.format(1)
        method = env.getattr(_fold(node.node.node, env, context, memo), node.node.attr)
        if not callable(method) or isinstance(method, Undefined):
            raise Impossible()
        args = [_fold(arg, env, context, memo) for arg in node.args]
        kwargs = {kw.key: _fold(kw.value, env, context, memo) for kw in node.kwargs}
        return check_size(method(*_checked_arguments(method, tuple(args), kwargs), **kwargs))
    return node.as_const(context)
