"""The workflow-file reference, generated from the pydantic models in `spec.py`.

`python -m flows.batch reference -o docs/workflow-reference.md` writes it; a test fails
when the committed file is stale.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from flows.workflow import spec

HEADER = """# Workflow file reference

Generated from `flows/workflow/spec.py` by `python -m flows.batch reference -o docs/workflow-reference.md`;
do not edit by hand. Unknown keys are errors (with a "did you mean"). Durations are seconds or
`30s` / `5m` / `1h30m`; memory is `512Mi` / `2Gi` / `1G`; CPU is cores (`0.5`, `2`, `500m`).

Templates (`command`, `script`, `when`, `condition`, `variables`, `conditions`, `validation`,
`prerequisites`) use `{{ .name }}`; inside commands each value is quoted for where it lands, and
refused where no quoting holds it (arithmetic unless `type: int`, `sh -c '...'`, backticks; see the
README's *Quoting*); `| raw` opts out.
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        base = args[0]
        metadata = " ".join(str(m) for m in args[1:])
        if "parse_duration" in metadata or "parse_timeout" in metadata:
            return "duration"
        if "parse_memory" in metadata:
            return "memory"
        if "parse_cpu" in metadata:
            return "cpu"
        if "_as_list" in metadata:
            return "list of text (or one text)"
        return _type_name(base)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(parts)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of name → {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return {str: "text", int: "integer", float: "number", bool: "boolean", Any: "any"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        return "`{}`" if value == {} else "`[]`" if value == [] else "(defaults)"
    if field.default is None or field.default is PydanticUndefined:
        return "—"
    return f"`{json.dumps(field.default)}`"


def _example(name: str, field: Any) -> str:
    if not field.examples:
        return ""
    value = field.examples[0]
    if isinstance(value, str) and "\n" in value:  # YAML would fold it; JSON keeps the \n visible
        text = f"{name}: {json.dumps(value)}"
    else:
        text = yaml.safe_dump({name: value}, default_flow_style=True, width=10_000, allow_unicode=True)
        text = text.strip().removeprefix("{").removesuffix("}")
    return "`" + text.replace("|", "\\|").replace("\n", " ") + "`"


def _models() -> list[type[BaseModel]]:
    """Every model reachable from `Workflow`, in the order a reader meets them."""
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            for found in _nested(field.annotation):
                visit(found)

    visit(spec.Workflow)
    return seen


def _nested(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _nested(arg)]


def render_reference() -> str:
    out = [HEADER]
    for model in _models():
        out.append(f"## {model.__name__}\n")
        out.append(f"{(model.__doc__ or '').strip()}\n")
        out.append("| key | type | default | meaning | example |")
        out.append("|---|---|---|---|---|")
        for name, field in model.model_fields.items():
            meaning = (field.description or "").replace("|", "\\|")
            out.append(
                f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {meaning} | {_example(name, field)} |"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"
