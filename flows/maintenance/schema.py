"""The schema the application expects, and how the database differs from it. Pure.

`deployments/maintenance/schema.yaml` names tables (schema-qualified), their columns with
types as PostgreSQL reports them (`format_type`), and their indexes. Differences are missing
tables, columns and indexes and columns of another type; tables in an expected schema that the
file does not name are reported as extra (a warning: new tables are not an error by
themselves).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from flows.errors import ValidationError
from flows.safe_yaml import load_yaml
from flows.user_files import read_user_text

# How PostgreSQL spells common type aliases (format_type output).
_TYPE_ALIASES = {
    "int": "integer",
    "int4": "integer",
    "int8": "bigint",
    "int2": "smallint",
    "serial": "integer",
    "bigserial": "bigint",
    "bool": "boolean",
    "float8": "double precision",
    "float4": "real",
    "varchar": "character varying",
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
    "jsonb": "jsonb",
}


class ExpectedTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: dict[str, str] = Field(default_factory=dict)
    indexes: list[str] = Field(default_factory=list)


class ExpectedSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tables: dict[str, ExpectedTable]
    extensions: list[str] = Field(default_factory=list)


def normalise_type(name: str) -> str:
    name = " ".join(name.lower().split())
    return _TYPE_ALIASES.get(name, name)


def qualified(name: str) -> str:
    return name if "." in name else f"public.{name}"


def load_expected(path: Path) -> tuple[ExpectedSchema, str]:
    """The expected schema and a hash of the file (part of the verification cache key)."""
    text = read_user_text(path, what="expected schema (OPSFLOW_EXPECTED_SCHEMA)")
    data = load_yaml(text, path)
    try:
        schema = ExpectedSchema.model_validate(data)
    except PydanticValidationError as exc:
        problem = exc.errors()[0]
        location = ".".join(str(p) for p in problem["loc"])
        raise ValidationError(f"{location}: {problem['msg']}", where=str(path)) from None
    return schema, hashlib.sha256(text.encode()).hexdigest()


def diff(expected: ExpectedSchema, actual: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Differences between the expected schema and `actual`:
    {"schema.table": {"columns": {name: type}, "indexes": [names]}}."""
    problems: list[str] = []
    extra: list[str] = []
    wanted = {qualified(name): table for name, table in expected.tables.items()}
    for name, table in sorted(wanted.items()):
        found = actual.get(name)
        if found is None:
            problems.append(f"missing table {name}")
            continue
        for column, type_ in table.columns.items():
            have = found["columns"].get(column)
            if have is None:
                problems.append(f"missing column {name}.{column}")
            elif normalise_type(have) != normalise_type(type_):
                problems.append(f"column {name}.{column} is {have}, expected {normalise_type(type_)}")
        for index in table.indexes:
            if index not in found["indexes"]:
                problems.append(f"missing index {index} on {name}")
    schemas = {name.split(".", 1)[0] for name in wanted}
    for name in sorted(actual):
        if name.split(".", 1)[0] in schemas and name not in wanted and name != "public.migration_history":
            extra.append(f"table {name} is not in the expected schema")
    return {"problems": problems, "extra": extra}
