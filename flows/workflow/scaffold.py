"""Workflow templates: list them, create a workflow from one, turn a workflow into one. Pure.

A template is a workflow file with one more top-level block, `template: {name, description,
parameters}`; its workflow parameters carry the defaults. Creating a workflow copies the
document as data, sets the chosen parameters' defaults and the workflow's name, and dumps it
with PyYAML, so no value can break the YAML or add keys. Built-in templates ship in
flows/workflow/templates/; user templates live in `OPSFLOW_TEMPLATES_DIR`
(deployments/templates/).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flows.errors import ValidationError
from flows.safe_yaml import compose_yaml, load_yaml
from flows.workflow.check import analyse
from flows.workflow.load import parse_workflow, read_text
from flows.workflow.params import check, coerce
from flows.workflow.spec import Parameter

BUILTIN_DIR = Path(__file__).parent / "templates"
META_KEYS = {"name", "description", "parameters"}
# Names, references and prose stay as they are: a literal becomes a parameter only in texts that run.
KEPT_KEYS = {
    "name",
    "description",
    "parameters",
    "depends_on",
    "capture_output",
    "circuit_breaker",
    "fallback",
}
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class WorkflowTemplate:
    name: str
    description: str
    path: Path
    builtin: bool
    workflow: dict[str, Any]
    settable: tuple[str, ...]

    def parameters(self) -> list[Parameter]:
        """The parameters `create --set` may give, in file order."""
        params = [Parameter.model_validate(p) for p in self.workflow.get("parameters") or []]
        return [p for p in params if p.name in self.settable]


def read_template(path: Path, *, builtin: bool = False) -> WorkflowTemplate:
    """A template file: its `template` block and the workflow around it, which must validate."""
    where = str(path)
    text = read_text(path)
    data = load_yaml(text, path)
    node = compose_yaml(text, path)
    meta = data.pop("template", None) if isinstance(data, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise ValidationError(
            "a template needs a `template:` block with at least `name` — see `opsflow template generate`",
            where=where,
        )
    unknown = set(meta) - META_KEYS
    if unknown:
        raise ValidationError(
            f"unknown key `template.{sorted(unknown)[0]}` — allowed: {', '.join(sorted(META_KEYS))}",
            where=where,
        )
    # Validated in place, the `template:` lines blanked, so errors carry the template file's lines.
    analyse(parse_workflow(_blank_key(text, node, "template"), path))
    declared = [p["name"] for p in data.get("parameters") or []]
    settable = meta.get("parameters") or declared
    if not isinstance(settable, list) or not all(isinstance(s, str) for s in settable):
        raise ValidationError("`template.parameters` must be a list of parameter names", where=where)
    missing = [name for name in settable if name not in declared]
    if missing:
        raise ValidationError(
            f"`template.parameters` names `{missing[0]}`, which the workflow does not declare", where=where
        )
    return WorkflowTemplate(
        name=meta["name"],
        description=str(meta.get("description") or data.get("description") or ""),
        path=path,
        builtin=builtin,
        workflow=data,
        settable=tuple(settable),
    )


def _blank_key(text: str, node: yaml.Node, key: str) -> str:
    """`text` with the lines of top-level `key` and its value left empty."""
    lines = text.split("\n")
    for key_node, value_node in node.value:
        if key_node.value == key:
            end = value_node.end_mark
            last = end.line - 1 if end.column == 0 else end.line
            for i in range(key_node.start_mark.line, last + 1):
                lines[i] = ""
    return "\n".join(lines)


def user_templates_dir() -> Path:
    from flows.settings import get_settings

    return get_settings().templates_dir


def available_templates(problems: list[str] | None = None) -> dict[str, WorkflowTemplate]:
    """Built-in templates, then the user's; a user template cannot shadow a built-in one.

    A user template that does not load is left out and its error appended to `problems`.
    """
    found: dict[str, WorkflowTemplate] = {}
    for folder, builtin in ((BUILTIN_DIR, True), (user_templates_dir(), False)):
        if not folder.is_dir():
            continue
        for file in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            try:
                template = read_template(file, builtin=builtin)
            except ValidationError as err:
                if builtin or problems is None:
                    raise
                problems.append(str(err))
                continue
            found.setdefault(template.name, template)
    return found


def find_template(name: str) -> WorkflowTemplate:
    """A template by name, or by the path of a template file."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return read_template(Path(name))
    problems: list[str] = []
    templates = available_templates(problems)
    if name not in templates:
        broken = f" (left out, not loading: {'; '.join(problems)})" if problems else ""
        raise ValidationError(
            f"unknown template `{name}` — templates: {', '.join(sorted(templates))}{broken}"
        )
    return templates[name]


def create_workflow(template: WorkflowTemplate, name: str, values: dict[str, str]) -> str:
    """The text of a new workflow named `name` from `template`, with `values` as defaults."""
    data = copy.deepcopy(template.workflow)
    data["name"] = name
    params = {p["name"]: p for p in data.get("parameters") or []}
    for key, raw in values.items():
        if key not in template.settable:
            raise ValidationError(
                f"template `{template.name}` has no parameter `{key}` — parameters: {', '.join(template.settable)}"
            )
        param = Parameter.model_validate(params[key])
        value = coerce(param, raw)
        check(param, value)
        params[key]["default"] = value
    header = (
        f"# {_one_line(name)}: created by `opsflow create` from template `{_one_line(template.name)}` "
        f"on {dt.date.today().isoformat()}.\n# {_one_line(template.description)}\n"
    )
    text = header + dump_yaml(data)
    analyse(parse_workflow(text, Path(name)))
    return text


def generate_template(
    path: Path, name: str, params: list[str], description: str | None = None
) -> tuple[str, list[str]]:
    """Template text from the workflow at `path`, and the names `create --set` will accept.

    `KEY` exposes an existing parameter; `KEY=VALUE` sets an existing parameter's default to
    VALUE, or else replaces the literal VALUE in every text of the workflow (commands,
    variables, conditions...) with `{{ .KEY }}` and declares KEY with VALUE as its default.
    """
    if not NAME.fullmatch(name):
        raise ValidationError(f"template name `{name}`: use letters, digits, `_`, `.` and `-` only")
    if any(t.builtin for t in available_templates([]).values() if t.name == name):
        raise ValidationError(f"`{name}` is a built-in template — choose another name")
    where = str(path)
    loaded = parse_workflow(read_text(path), path)
    analyse(loaded)
    data = load_yaml(loaded.text, path)
    declared = {p["name"]: p for p in data.get("parameters") or []}
    settable: list[str] = []
    for item in params:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValidationError(f"--param expects KEY or KEY=VALUE, got `{item}`")
        if key in declared:
            if sep:
                param = Parameter.model_validate(declared[key])
                declared[key]["default"] = coerce(param, value)
        elif not sep:
            raise ValidationError(
                f"`{key}` is not a parameter of {where} — give KEY=VALUE to turn a literal into one "
                f"(parameters: {', '.join(declared) or 'none'})"
            )
        elif not value:
            raise ValidationError(f"--param {key}=: the literal to replace is empty")
        else:
            data, count = _replace_literal(data, value, "{{ ." + key + " }}")
            if count == 0:
                raise ValidationError(f"`{value}` does not occur in {where}; nothing to turn into `{key}`")
            param = {"name": key, "description": f"Was `{value}` in {path.name}", "default": value}
            if re.fullmatch(r"-?[0-9]+", value):
                param |= {"type": "int", "default": int(value)}
            data.setdefault("parameters", []).append(param)
            declared[key] = param
        if key not in settable:
            settable.append(key)
    meta: dict[str, Any] = {"name": name, "description": description or data.get("description") or ""}
    if params:
        meta["parameters"] = settable
    check_workflow(data, f"template {name}")
    text = (
        f"# Template `{name}`, generated by `opsflow template generate` from {_one_line(path.name)}.\n"
        + dump_yaml({"template": meta})
        + "\n"
        + dump_yaml(data)
    )
    return text, settable or list(declared)


def _replace_literal(value: Any, literal: str, replacement: str) -> tuple[Any, int]:
    """Replace `literal` where it stands as a whole word in every string inside `value`."""
    pattern = re.compile(r"(?<![\w.-])" + re.escape(literal) + r"(?![\w-])")
    if isinstance(value, str):
        if value == literal:
            return replacement, 1
        return pattern.subn(replacement.replace("\\", "\\\\"), value)
    if isinstance(value, list):
        pairs = [_replace_literal(v, literal, replacement) for v in value]
        return [v for v, _ in pairs], sum(n for _, n in pairs)
    if isinstance(value, dict):
        out, total = {}, 0
        for k, v in value.items():
            if k in KEPT_KEYS:
                out[k] = v
                continue
            out[k], n = _replace_literal(v, literal, replacement)
            total += n
        return out, total
    return value, 0


def _one_line(text: str) -> str:
    """Text safe inside a YAML comment line."""
    return " ".join(str(text).split())


def write_new(path: Path, text: str, *, force: bool) -> None:
    """Write `text` to `path`, refusing to replace an existing file unless `force`."""
    if path.exists() and not path.is_file():
        raise ValidationError("exists and is not a regular file — choose another --output", where=str(path))
    if path.exists() and not force:
        raise ValidationError("already exists — give --force to replace it", where=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def check_workflow(data: Any, where: str) -> None:
    """Validate a workflow document as `opsflow validate` would."""
    analyse(parse_workflow(dump_yaml(data), Path(where)))


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Commands read best as literal blocks; PyYAML falls back to quoting when a block cannot hold them.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    """YAML text of `data`; a blank line before each top-level list or mapping, for reading."""
    if not isinstance(data, dict):
        return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    parts = []
    for key, value in data.items():
        text = yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
        parts.append(("\n" if parts and isinstance(value, list | dict) else "") + text)
    return "".join(parts)
