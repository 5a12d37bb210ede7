"""opsflow's settings: one class, read once, from `OPSFLOW_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flows.durations import shown
from flows.limits import MAX_PARALLEL


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSFLOW_", extra="ignore")

    environment: str = Field("development", description="Environment when a run gives no -e.")
    workflows_dir: Path = Field(Path("deployments/workflows"), description="Where `list` looks.")
    templates_dir: Path = Field(
        Path("deployments/templates"), description="User workflow templates (`templates`, `create`)."
    )
    parallel: int = Field(
        8, ge=1, le=MAX_PARALLEL, description="Most steps running at once when --parallel is not given."
    )
    server: Literal["auto", "reuse", "ephemeral"] = Field(
        "auto", description="How local runs find a Prefect API (see flows/local_server.py)."
    )
    server_port: int = Field(4200, ge=1, le=65535, description="Port of the local Prefect server.")
    log_aggregation_dir: Path | None = Field(
        None,
        description="Where `monitoring.log_aggregation` writes each run's JSON lines "
        "(default OPSFLOW_HOME/logs/aggregate).",
    )
    webhook_callback_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts, addresses or networks a webhook event's callback_url may name, "
        "comma-separated (added to `files serve --callback-host`).",
    )

    @field_validator("webhook_callback_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return (
            [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings; a bad `OPSFLOW_*` value is one ValidationError naming the variable (exit 3)."""
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        from flows.errors import ValidationError

        error = exc.errors()[0]
        name = "OPSFLOW_" + "_".join(str(part) for part in error["loc"]).upper()
        raise ValidationError(f"{name}: {error['msg']}, got {shown(error.get('input'))}") from None
