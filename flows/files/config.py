"""Per-environment batch settings (seed 000's config_manager: defaults merged with an
environment's overrides), from one YAML file. Pure.

    defaults:
      processor: records:deployments/schemas/records.json
      output: /srv/opsflow/clean
      workers: 2
    environments:
      production:
        workers: 4
        notify: json://alerts.internal:8080/batches

Command-line options given explicitly win over the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from flows.durations import MAX_DURATION_SECONDS
from flows.errors import ValidationError
from flows.limits import MAX_PARALLEL, MAX_RETRIES
from flows.safe_yaml import load_yaml
from flows.user_files import read_user_text


class BatchSettings(BaseModel):
    """The `files run` options a config file may set."""

    model_config = ConfigDict(extra="forbid")

    processor: str | None = None
    output: str | None = None
    mode: str | None = Field(None, pattern="^(sequential|parallel|queue)$")
    workers: int | None = Field(None, ge=1, le=MAX_PARALLEL)
    retries: int | None = Field(None, ge=0, le=MAX_RETRIES)
    retry_delay: float | None = Field(None, ge=0, le=MAX_DURATION_SECONDS)
    fallback: list[str] | None = None
    timeout: float | None = Field(None, ge=0, le=MAX_DURATION_SECONDS)
    chunk_size: int | None = Field(None, ge=1)
    notify: str | None = None
    name: str | None = None
    deployment: str | None = None


class BatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: BatchSettings = Field(default_factory=BatchSettings)
    environments: dict[str, BatchSettings] = Field(default_factory=dict)


def load_batch_config(path: Path, environment: str | None) -> dict[str, Any]:
    """The settings for `environment`: its overrides on top of the defaults (unset keys omitted)."""
    data = load_yaml(read_user_text(path, what="config file"), path) or {}
    try:
        config = BatchConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValidationError(f"{where}: {first['msg']}", where=str(path)) from None
    settings = config.defaults.model_dump(exclude_none=True)
    if environment is not None:
        if environment not in config.environments:
            known = ", ".join(sorted(config.environments)) or "none"
            raise ValidationError(
                f"no environment {environment!r} in the config (known: {known})", where=str(path)
            )
        settings.update(config.environments[environment].model_dump(exclude_none=True))
    return settings
