"""Parameters from `--set` and `-e`, typed and validated; variables and conditions rendered.

The result is the template context every later stage reads. Pure: nothing runs here.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from flows.errors import OpsflowError, ValidationError
from flows.masking import Masker, masked_error
from flows.secrets import MASKED, is_secret_name, reference, resolve_reference, reveal, scrub_text
from flows.workflow.load import LoadedWorkflow
from flows.workflow.spec import Parameter
from flows.workflow.template import ChoiceValue, OptionValue, compile_template, is_template
from flows.workflow.units import FALSE_WORDS, TRUE_WORDS

BUILTIN_NAMES = ("environment", "workflow_id", "workflow", "outputs", "logical_date")
MAX_VALUE_LENGTH = 64 * 1024


@dataclass
class Bound:
    """A workflow's template context, ready for planning and running.

    `secrets`: the names of secret parameters; `references`: the `env:`/`block:` reference each
    secret came from, where it came from one (what may be shown and recorded instead)."""

    context: dict[str, Any]
    parameters: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    secrets: frozenset[str] = frozenset()
    references: dict[str, str] = field(default_factory=dict)
    derived_secrets: dict[str, Any] = field(default_factory=dict)  # variables made from secrets

    def is_secret(self, name: str) -> bool:
        return name in self.secrets

    def secret_values(self) -> list[Any]:
        """What a run must mask: secret parameters' values (not references, which hold none) and
        the variables made from them."""
        return [
            *(v for k, v in self.parameters.items() if self.is_secret(k) and not reference(v)),
            *self.derived_secrets.values(),
        ]

    def shown_parameters(self) -> dict[str, Any]:
        """The parameters as `plan` shows them: a secret is its reference or `**********`."""
        return {
            name: self.references.get(name, MASKED)
            if name in self.secrets and value not in (None, "")
            else value
            for name, value in self.parameters.items()
        }


def secret_names(loaded: LoadedWorkflow, values: Mapping[str, Any] | None = None) -> frozenset[str]:
    """The secret parameters: declared `secret: true`, named like a secret (unless `secret:
    false`), or holding a URL with a password (given or as default) — for undeclared `values` too."""
    values = values or {}
    declared = {p.name: p for p in loaded.spec.parameters}
    names = [p.name for p in loaded.spec.parameters if p.is_secret]
    for param in loaded.spec.parameters:
        value = reveal(values.get(param.name, param.default))
        if param.secret is None and _holds_url_password(value):
            names.append(param.name)
    for name, value in values.items():
        if name not in declared and (is_secret_name(name) or _holds_url_password(reveal(value))):
            names.append(name)
    return frozenset(names)


def _holds_url_password(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return any(isinstance(item, str) and scrub_text(item) != item for item in items)


def for_flow(loaded: LoadedWorkflow, values: Mapping[str, Any]) -> dict[str, Any]:
    """`--set` values as the flow takes them: a secret as a SecretStr, which Prefect stores as
    `**********` in the flow run's parameters (the flow in this process still gets the value);
    a reference (`env:NAME`, `block:NAME`) as it is, since it holds no secret."""
    secret = secret_names(loaded, values)
    return {
        name: SecretStr(value)
        if name in secret and isinstance(value, str) and not reference(value)
        else value
        for name, value in values.items()
    }


def _shown(param: Parameter, value: Any) -> str:
    """A value as an error message may quote it: never a secret's, nor any of it (a prefix, a
    password inside a URL), and never more than 40 characters of another."""
    text = repr(value)
    if param.is_secret or scrub_text(text) != text:
        return "the value (a secret, not shown)"
    return text


def parse_sets(values: Iterable[str], verbatim: Iterable[str] = ()) -> dict[str, str]:
    """`--set a=1,b=x,y --set c=[1,2]` -> {"a": "1", "b": "x,y", "c": "[1,2]"}.

    A comma starts a new pair only when what follows looks like `key=`; otherwise it
    belongs to the value, so list values can be written `services=api,worker`.
    `verbatim` (`--param key=value`) holds one pair each, the value taken as it is, commas and
    all: the form for a value from outside, which must not be able to add other parameters.
    """
    result: dict[str, str] = {}
    for raw in values:
        for piece in _split_top_level(raw):
            result.update([_pair(piece, "--set expects key=value pairs separated by commas")])
    for raw in verbatim:
        result.update([_pair(raw, "--param expects one key=value")])
    return result


def _pair(piece: str, expects: str) -> tuple[str, str]:
    key, sep, value = piece.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        # the pair is not shown: it may be a secret given without its name
        raise ValidationError(
            f"{expects}, the key made of letters, digits and _ (the pair that is not one is not shown: "
            "it may hold a secret)"
        )
    return key, value


def _split_top_level(text: str) -> list[str]:
    pieces: list[str] = []
    depth, quote, current = 0, "", ""
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0 and re.match(r"\s*[A-Za-z_][A-Za-z0-9_]*=", text[index + 1 :]):
            pieces.append(current)
            current = ""
            continue
        current += char
    if current or not pieces:
        pieces.append(current)
    return [p for p in pieces if p.strip()]


def coerce(param: Parameter, value: Any) -> Any:
    """Turn a command-line string (or a YAML default) into the parameter's type."""
    kind = param.kind
    name = param.name
    if kind == "list":
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValidationError(f"parameter `{name}`: not a JSON list ({exc.msg})") from None
            else:
                value = [item.strip() for item in text.split(",") if item.strip()]
        if not isinstance(value, list):
            raise ValidationError(f"parameter `{name}` must be a list, got {_shown(param, value)}")
        return value
    if isinstance(value, list | dict):
        raise ValidationError(f"parameter `{name}` must be a {kind}, got a {type(value).__name__}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE_WORDS | FALSE_WORDS:
            return text in TRUE_WORDS
        raise ValidationError(f"parameter `{name}` must be true or false, got {_shown(param, value)}")
    if kind in ("int", "float"):
        try:
            number = int(str(value).strip()) if kind == "int" else float(str(value).strip())
        except ValueError:
            raise ValidationError(
                f"parameter `{name}` must be a{'n' if kind == 'int' else ''} {kind}, got {_shown(param, value)}"
            ) from None
        return number
    return "" if value is None else str(value)


def check(param: Parameter, value: Any) -> None:
    """Apply the parameter's `validation` block."""
    rules = param.validation
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str) and ("\x00" in item or len(item) > MAX_VALUE_LENGTH):
            raise ValidationError(f"parameter `{param.name}`: value contains a NUL byte or is over 64 KiB")
    if rules is None:
        return
    items = value if isinstance(value, list) else [value]
    if rules.pattern is not None:
        for item in items:
            if not re.fullmatch(rules.pattern, str(item)):
                raise ValidationError(
                    f"parameter `{param.name}`: {_shown(param, item)} does not match {rules.pattern!r}"
                )
    if rules.enum is not None:
        for item in items:
            if item not in rules.enum:
                allowed = ", ".join(map(str, rules.enum))
                raise ValidationError(
                    f"parameter `{param.name}`: {_shown(param, item)} is not one of {allowed}"
                )
    if isinstance(value, list):
        if rules.min_items is not None and len(value) < rules.min_items:
            raise ValidationError(
                f"parameter `{param.name}`: needs at least {rules.min_items} item(s), got {len(value)}"
            )
        if rules.max_items is not None and len(value) > rules.max_items:
            raise ValidationError(
                f"parameter `{param.name}`: allows at most {rules.max_items} item(s), got {len(value)}"
            )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if rules.minimum is not None and value < rules.minimum:
            raise ValidationError(
                f"parameter `{param.name}`: {_shown(param, value)} is below the minimum {rules.minimum:g}"
            )
        if rules.maximum is not None and value > rules.maximum:
            raise ValidationError(
                f"parameter `{param.name}`: {_shown(param, value)} is above the maximum {rules.maximum:g}"
            )


def check_undeclared(loaded: LoadedWorkflow, sets: Mapping[str, Any]) -> list[str]:
    """The given names the workflow does not declare, which a run passes as text; a name
    opsflow sets itself, or one close to a declared name (a typo), is refused."""
    declared = [p.name for p in loaded.spec.parameters]
    undeclared = [name for name in sets if name not in declared]
    for name in undeclared:
        if name in BUILTIN_NAMES[1:]:
            raise ValidationError(f"`{name}` is set by opsflow and cannot be passed with --set")
        hint = difflib.get_close_matches(name, declared, n=1)
        if hint:
            raise ValidationError(f"unknown parameter `{name}` — did you mean `{hint[0]}`?")
    return undeclared


def bind(
    loaded: LoadedWorkflow,
    sets: Mapping[str, Any],
    *,
    environment: str | None,
    default_environment: str,
    workflow_id: str,
    logical_date: str | None = None,
    resolve: tuple[str, ...] = ("env",),
) -> Bound:
    """Typed parameters + builtins + variables + conditions, with validation rules checked.

    `logical_date` is the moment the run stands for (a backfill passes its cron tick); without
    one, now (UTC), so `plan` shows what a run started now would get. A secret parameter's value
    (given, or its default) may be a SecretStr or a reference, resolved when its kind is in
    `resolve`: `env:NAME` by default, `block:NAME` too inside the flow run (it needs the Prefect
    API); until then the reference stands for the value and its `validation` waits for the run.
    """
    spec = loaded.spec
    secrets = secret_names(loaded, sets)
    references: dict[str, str] = {}

    def revealed(name: str, raw: Any) -> tuple[Any, bool]:
        """(the value, whether it is known yet): secrets revealed and their references resolved."""
        raw = reveal(raw)
        if name not in secrets or not reference(raw):
            return raw, True
        references[name] = raw.strip()
        value = resolve_reference(raw, f"secret parameter `{name}`", kinds=resolve)
        return (raw.strip(), False) if value is None else (value, True)

    warnings: list[str] = []
    params: dict[str, Any] = {}
    for name in check_undeclared(loaded, sets):
        if name != "environment":
            warnings.append(f"parameter `{name}` is not declared by the workflow; passed as text")
        params[name], known = revealed(name, sets[name])
        if known:
            check(Parameter(name=name), params[name])
    for param in spec.parameters:
        known = True
        if param.name in sets:
            raw, known = revealed(param.name, sets[param.name])
            value = coerce(param, raw) if known else raw
        elif param.name == "environment" and environment is not None:
            value = environment
        elif param.default is not None:
            raw, known = revealed(param.name, param.default)
            value = coerce(param, raw) if known else raw
        elif param.name == "environment":
            value = default_environment
        elif param.required:
            raise ValidationError(
                f"parameter `{param.name}` is required — pass --set {param.name}=...",
                where=loaded.where(("parameters", spec.parameters.index(param))),
            )
        else:
            value = [] if param.kind == "list" else None
        if value is not None and known:
            check(param, value)
        params[param.name] = value
    if environment is not None:
        params["environment"] = environment
    params.setdefault("environment", default_environment)
    context: dict[str, Any] = {
        **_mark_choices(loaded, _check_options(loaded, params)),
        "workflow_id": workflow_id,
        "workflow": spec.name,
        "outputs": {},
        "logical_date": logical_date or datetime.now(UTC).isoformat(timespec="seconds"),
    }
    derived: dict[str, Any] = {}
    try:
        _derive(loaded, context, secrets, derived)
    except OpsflowError as err:  # a condition's or variable's error may quote what a secret made
        raise masked_error(
            err, Masker([*(params[n] for n in secrets if n in params), *derived.values()])
        ) from None
    return Bound(
        context=context,
        parameters=params,
        warnings=warnings,
        secrets=secrets,
        references=references,
        derived_secrets=derived,
    )


def _derive(
    loaded: LoadedWorkflow, context: dict[str, Any], secrets: frozenset[str], derived: dict[str, Any]
) -> None:
    """Variables and conditions into `context`; a variable made from a secret (or from such a
    variable) is a secret too, its value in `derived`."""
    spec = loaded.spec
    for key, value in spec.variables.items():
        if isinstance(value, str) and is_template(value):
            where = loaded.where(("variables", key))
            template = compile_template(value, where=where, line=loaded.line(("variables", key)))
            context[key] = template.evaluate(context)
            if template.names() & (secrets | derived.keys()):
                derived[key] = context[key]
        else:
            context[key] = value
    for index, cond in enumerate(spec.conditions):
        loc = ("conditions", index, "expression")
        template = compile_template(cond.expression, where=loaded.where(loc), line=loaded.line(loc))
        if template.output_names():
            raise ValidationError(
                f"condition `{cond.name}` reads step outputs, but conditions are decided before any step runs "
                "— put the expression in the step's `when`",
                where=loaded.where(loc),
            )
        context[cond.name] = template.truth(context)
    _check_rules(loaded, context)


def _check_options(loaded: LoadedWorkflow, params: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse a value starting with `-` where a command would take it for an option (`tar ...
    {{ .files }}` with `--checkpoint-action=exec=...` runs a command), unless the parameter's
    `validation.pattern` allows it; such allowed values are marked so commands accept them."""
    from flows.workflow.check import option_parameters  # check.py imports this module

    declared = {p.name: p for p in loaded.spec.parameters}
    uses: dict[str, Any] | None = None
    values = dict(params)
    for name, value in params.items():
        items = value if isinstance(value, list) else [value]
        dashed = [i for i, item in enumerate(items) if isinstance(item, str) and item.startswith("-")]
        if not dashed:
            continue
        rules = declared[name].validation if name in declared else None
        if rules is not None and rules.pattern is not None:  # check() matched every item against it
            marked = [OptionValue(i) if isinstance(i, str) and i.startswith("-") else i for i in items]
            values[name] = marked if isinstance(value, list) else marked[0]
            continue
        uses = option_parameters(loaded) if uses is None else uses
        for use in uses.get(name, []):
            hit = next((i for i in dashed if (use.starts_word if i == 0 else use.splits)), None)
            if hit is not None:
                raise ValidationError(
                    f"parameter `{name}`: {_shown(declared.get(name) or Parameter(name=name), items[hit])} "
                    f"starts with `-`, and `{use.command}` "
                    f"({use.where}) takes it as an argument, where it would be read as an option — if "
                    f"`{name}` may start with `-`, give it a `validation.pattern` that allows it; else "
                    "write `--` before it in the command"
                )
    return values


def _mark_choices(loaded: LoadedWorkflow, values: dict[str, Any]) -> dict[str, Any]:
    """Mark the values of parameters whose `validation.enum` lists them (check() made sure):
    the author wrote them, so they may name the program a command runs."""
    for param in loaded.spec.parameters:
        rules = param.validation
        value = values.get(param.name)
        if (
            rules is None
            or rules.enum is None
            or not isinstance(value, str)
            or isinstance(value, OptionValue)
        ):
            continue
        if value in rules.enum:
            values[param.name] = ChoiceValue(value)
    return values


def _check_rules(loaded: LoadedWorkflow, context: Mapping[str, Any]) -> None:
    for index, rule in enumerate(loaded.spec.validation):
        loc = ("validation", index, "expression")
        template = compile_template(rule.expression, where=loaded.where(loc), line=loaded.line(loc))
        message = rule.message or f"validation `{rule.name}` failed"
        try:
            holds = template.truth(context)
        except ValidationError as exc:
            # An undefined parameter in a rule is the rule failing, e.g. "services are required".
            raise ValidationError(f"{message} ({exc.message})", where=loaded.where(loc)) from None
        if not holds:
            raise ValidationError(message, where=loaded.where(loc))
