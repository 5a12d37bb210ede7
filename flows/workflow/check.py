"""Static checks of a workflow beyond its schema: references, templates, resources. Pure.

`validate` runs these; so does every run before it starts anything.
"""

from __future__ import annotations

import difflib
import graphlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flows.errors import ValidationError
from flows.secrets import reference, reveal
from flows.shellcommands import program_choice_problem
from flows.shellquote import ARITH, UNQUOTED
from flows.workflow.conditions import check_health_marks, check_rollback
from flows.workflow.graph import Graph, build_graph
from flows.workflow.load import LoadedWorkflow, Location
from flows.workflow.metrics import check_metrics
from flows.workflow.params import BUILTIN_NAMES, check, check_undeclared, coerce
from flows.workflow.recovery import check_recovery
from flows.workflow.spec import Step
from flows.workflow.template import ShellValue, Template, compile_template, program_message
from flows.workflow.units import format_cpu, format_memory


@dataclass
class Analysis:
    graph: Graph
    warnings: list[str] = field(default_factory=list)


def analyse(loaded: LoadedWorkflow, sets: Mapping[str, Any] | None = None) -> Analysis:
    """Build the graph and check everything that does not need parameter values.

    `sets` are the values the run will be given (`--set`): a name the templates use that is
    neither declared nor built in must be among them, and those of declared parameters must
    fit the parameter. Parameter defaults must fit too, whatever `sets` holds.
    """
    sets = sets or {}
    graph = build_graph(loaded)
    _check_parameters(loaded, sets)
    _check_variables(loaded)
    _check_references(loaded, graph)
    _check_resources(loaded, graph)
    check_metrics(loaded, graph)
    check_recovery(loaded, graph)
    check_health_marks(loaded, graph)
    warnings = check_rollback(loaded, graph)
    return Analysis(graph=graph, warnings=[*warnings, *check_templates(loaded, graph, set(sets))])


def _check_parameters(loaded: LoadedWorkflow, sets: Mapping[str, Any]) -> None:
    """What binding would refuse of a default or a given value, refused now with its line. A
    secret given as a reference (`env:NAME`, `block:NAME`) is checked once resolved, by `bind`."""
    try:
        check_undeclared(loaded, sets)
    except ValidationError as err:
        raise ValidationError(err.message, where=loaded.where(("parameters",))) from None
    for index, param in enumerate(loaded.spec.parameters):
        if param.default is not None and not (param.is_secret and reference(param.default)):
            try:
                check(param, coerce(param, param.default))
            except ValidationError as err:
                raise ValidationError(
                    f"`default`: {err.message}", where=loaded.where(("parameters", index, "default"))
                ) from None
        value = reveal(sets.get(param.name))
        if param.name in sets and not (param.is_secret and reference(value)):
            check(param, coerce(param, value))


def _check_variables(loaded: LoadedWorkflow) -> None:
    """Variables are computed in file order, each from parameters and earlier variables: one that
    uses itself, a later one, or (through others) comes back to itself is refused now, naming
    the cycle, instead of failing the run as an undefined name."""
    spec = loaded.spec
    order = {key: index for index, key in enumerate(spec.variables)}
    # a variable named like a parameter or a built-in reads that value, never a variable
    given = {p.name for p in spec.parameters} | set(BUILTIN_NAMES)
    uses: dict[str, list[str]] = {}
    for key, value in spec.variables.items():
        if isinstance(value, str) and "{{" in value:
            loc = ("variables", key)
            names = compile_template(value, where=loaded.where(loc), line=loaded.line(loc)).names()
            uses[key] = sorted((n for n in names if n in order and n not in given), key=order.__getitem__)
    try:
        graphlib.TopologicalSorter(uses).prepare()
    except graphlib.CycleError as err:
        cycle: list[str] = err.args[1][:-1]
        if len(cycle) > 1 and cycle[1] not in uses[cycle[0]]:
            cycle.reverse()  # read it as "uses"
        start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
        cycle = cycle[start:] + cycle[:start]
        shown = " → ".join(f"`{key}`" for key in [*cycle, cycle[0]])
        what = (
            f"variable `{cycle[0]}` uses itself"
            if len(cycle) == 1
            else f"variables use each other in a cycle: {shown}"
        )
        raise ValidationError(
            f"{what} — no value can be computed: use a parameter or a literal instead",
            where=loaded.where(("variables", cycle[0])),
        ) from None
    for key, used in uses.items():
        later = [n for n in used if order[n] > order[key]]
        if later:
            raise ValidationError(
                f"variable `{key}` uses `.{later[0]}`, which is defined after it — variables may use "
                f"parameters and earlier variables: move `{later[0]}` above `{key}`",
                where=loaded.where(("variables", key)),
            )


def _check_references(loaded: LoadedWorkflow, graph: Graph) -> None:
    spec = loaded.spec
    captured: dict[str, str] = {}
    for node in graph.nodes.values():
        step = node.step
        if step.circuit_breaker is not None and step.circuit_breaker not in spec.circuit_breakers:
            known = ", ".join(sorted(spec.circuit_breakers)) or "none are defined"
            raise ValidationError(
                f"step `{node.id}` names circuit breaker `{step.circuit_breaker}`, which `circuit_breakers` "
                f"does not define ({known})",
                where=loaded.where((*node.loc, "circuit_breaker")),
            )
        name = step.capture_output
        if name is not None:
            if name in captured:
                raise ValidationError(
                    f"`capture_output: {name}` is used by `{captured[name]}` and `{node.id}` — use distinct names",
                    where=loaded.where((*node.loc, "capture_output")),
                )
            captured[name] = node.id


def _check_resources(loaded: LoadedWorkflow, graph: Graph) -> None:
    """A step (or a group's default) asking for more than the whole run may hold is a mistake:
    the dispatcher would run it alone, above the limit, rather than never."""
    limits = loaded.spec.resource_limits
    if limits is None:
        return
    show = {"memory": format_memory, "cpu": format_cpu}
    for node in graph.nodes.values():
        for key in ("resources", "resource_requirements"):
            wanted = getattr(node.step, key)
            if wanted is None:
                continue
            for kind, limit in (("memory", limits.memory_limit), ("cpu", limits.cpu_limit)):
                amount = getattr(wanted, kind)
                if amount is not None and limit is not None and amount > limit:
                    raise ValidationError(
                        f"step `{node.id}` asks for {kind} {show[kind](amount)} in `{key}`, but "
                        f"`resource_limits.{kind}_limit` allows {show[kind](limit)} for the whole run — "
                        f"lower it or raise the limit",
                        where=loaded.where((*node.loc, key, kind)),
                    )


def check_templates(
    loaded: LoadedWorkflow, graph: Graph, given: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """Compile every template now (syntax errors fail validation); a name that is neither
    declared nor built in nor `given` (with --set) is an error, as rendering it would be."""
    spec = loaded.spec
    declared = {p.name for p in spec.parameters} | set(spec.variables) | {c.name for c in spec.conditions}
    declared |= set(BUILTIN_NAMES)
    known = declared | given
    captured = {n.step.capture_output for n in graph.nodes.values() if n.step.capture_output}
    warnings: list[str] = []
    for loc, source in _template_fields(loaded, graph):
        template = compile_template(source, where=loaded.where(loc), line=loaded.line(loc))
        if loc[-1] in ("command", "script"):
            _check_quoting(loaded, graph, loc, template)
        for name in sorted(template.output_names() - captured):
            raise ValidationError(
                f"`.outputs.{name}` is never captured — add `capture_output: {name}` to the step that prints it",
                where=loaded.where(loc),
            )
        for name in sorted(template.names() - known):
            hint = difflib.get_close_matches(name, sorted(declared), n=1)
            raise ValidationError(
                f"`.{name}` is not declared"
                + (
                    f" — did you mean `.{hint[0]}`?"
                    if hint
                    else f" — declare it under `parameters` or give it with --set {name}=..."
                ),
                where=loaded.where(loc),
            )
    return warnings


SHELLS = {"bash", "sh", "dash", "zsh", "ksh", "ash", "busybox"}
NUMBER_KINDS = ("int", "float")


def _check_quoting(loaded: LoadedWorkflow, graph: Graph, loc: Location, template: Template) -> None:
    """Values are quoted for shells only, and only where a shell's quoting can hold them."""
    if not template.has_values():
        return
    where = loaded.where(loc)
    source = template.source
    interpreter = source.splitlines()[0][2:].split() if source.startswith("#!") else []
    if interpreter and os.path.basename(interpreter[0]) == "env" and len(interpreter) > 1:
        interpreter = interpreter[1:]
    shell = _step_shell(graph, loc)
    program = os.path.basename(interpreter[0]) if interpreter else os.path.basename(shell or "bash")
    if program not in SHELLS:
        raise ValidationError(
            f"template values are quoted for shells, not for {program}: read them from the environment "
            "instead (each parameter is exported as OPSFLOW_PARAM_<NAME>)",
            where=where,
        )
    kinds = {p.name: p.kind for p in loaded.spec.parameters}
    for value in template.shell_values():  # raises where no quoting is safe
        if value.slot.program:
            _check_program(loaded, value, where)
        if value.slot.kind != ARITH:
            continue
        loose = sorted(n for n in value.names if kinds.get(n) not in NUMBER_KINDS)
        if loose:
            raise ValidationError(
                f"line {value.slot.line} of the command: `{{{{ {value.shown} }}}}` lands in arithmetic "
                "(`$(( ))`, `(( ))`, `let`, `[[ -gt ]]`, an array subscript, `${x:offset}`), where bash "
                f"evaluates text such as `a[$(cmd)]` even inside quotes — declare `{loose[0]}` as a "
                "parameter with `type: int` (or `float`), so its value is checked to be a number",
                where=where,
            )


def _check_program(loaded: LoadedWorkflow, value: ShellValue, where: str | None) -> None:
    """A template that chooses what runs must be a parameter whose `validation.enum` lists
    the programs it may name, each one that takes its arguments as data, or a `type: bool`
    parameter (it renders `true` or `false`)."""
    line = f"line {value.slot.line} of the command: "
    params = {p.name: p for p in loaded.spec.parameters}
    name = next(iter(value.names)) if len(value.names) == 1 else ""
    param = params.get(name)
    rules = param.validation if param is not None else None
    plain = not value.raw and value.shown in (f".{name}", name) and param is not None
    if plain and param is not None and param.kind == "bool":
        return  # a bool renders `true` or `false`: `if {{ .dry_run }}; then`
    if not plain or param is None or param.kind == "list" or rules is None or rules.enum is None:
        raise ValidationError(line + program_message(value.shown), where=where)
    for choice in rules.enum:
        problem = program_choice_problem(choice)
        if problem:
            raise ValidationError(
                f"{line}`{{{{ {value.shown} }}}}` chooses what runs, and `{name}`'s `validation.enum` "
                f"allows {choice!r}, which {problem} — list only programs that take their arguments as data",
                where=where,
            )


@dataclass(frozen=True)
class OptionUse:
    """A parameter's value lands in a command's argument, where a leading `-` makes an option."""

    where: str
    command: str
    starts_word: bool  # the value's first character starts the argument
    splits: bool  # outside quotes: each later item of a list starts an argument too


def option_parameters(loaded: LoadedWorkflow) -> dict[str, list[OptionUse]]:
    """Where each parameter's value lands in a command's arguments (variables count for the
    names their templates read)."""
    graph = build_graph(loaded)
    reads: dict[str, frozenset[str]] = {
        key: compile_template(value).names() if isinstance(value, str) else frozenset()
        for key, value in loaded.spec.variables.items()
    }
    found: dict[str, list[OptionUse]] = {}
    for loc, source in _template_fields(loaded, graph):
        if loc[-1] not in ("command", "script") or "{{" not in source:
            continue
        try:
            values = compile_template(source).shell_values()
        except ValidationError:
            continue  # validation reports it
        for value in values:
            slot = value.slot
            if value.raw or slot.option_of is None:
                continue
            names, seen = set(value.names), set()
            while names - seen:  # a variable stands for the names its template reads
                name = (names - seen).pop()
                seen.add(name)
                names |= reads.get(name, frozenset())
            use = OptionUse(loaded.where(loc), slot.option_of, slot.starts_word, slot.kind == UNQUOTED)
            for name in seen:
                found.setdefault(name, []).append(use)
    return found


def _step_shell(graph: Graph, loc: Location) -> str | None:
    for node in graph.nodes.values():
        if loc[: len(node.loc)] == node.loc and len(loc) == len(node.loc) + 1:
            return node.step.shell
    for hook in graph.hooks():
        if loc[: len(hook.loc)] == hook.loc and len(loc) == len(hook.loc) + 1:
            return hook.step.shell
    return None


def _template_fields(loaded: LoadedWorkflow, graph: Graph) -> list[tuple[Location, str]]:
    spec = loaded.spec
    fields: list[tuple[Location, str]] = []
    for key, value in spec.variables.items():
        if isinstance(value, str):
            fields.append((("variables", key), value))
    for index, cond in enumerate(spec.conditions):
        fields.append((("conditions", index, "expression"), cond.expression))
    for index, rule in enumerate(spec.validation):
        fields.append((("validation", index, "expression"), rule.expression))
    for index, pre in enumerate(spec.prerequisites):
        fields.append((("prerequisites", index, "command"), pre.command))
    steps: list[tuple[Location, Step]] = [(n.loc, n.step) for n in graph.nodes.values()]
    steps += [(h.loc, h.step) for h in graph.hooks()]
    for loc, step in steps:
        for key in ("command", "script", "when", "condition"):
            value = getattr(step, key)
            if value is not None:
                fields.append(((*loc, key), value))
    return fields
