"""Settings of the maintenance and health procedures: one model, four sources.

Precedence, lowest first: the defaults below < a `.env.<environment>` file < environment
variables < command-line options. Every value is validated when a command starts; a bad one
exits 3 naming the setting. Connection URLs are `SecretStr`: their passwords are never
printed, logged, passed on a command line or recorded (`redacted_url` is what people see).

The target database and Redis are the application's, never opsflow's own records database:
the target is read only from `OPSFLOW_TARGET_DATABASE_URL`, `DATABASE_URL` and `--database-url`,
and `OPSFLOW_DATABASE_URL` (the records database, flows/records/db.py) is never one of its
sources. Procedures that write to the target also refuse it when it is the records database
(flows/maintenance/guard.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from flows.durations import MAX_DURATION_SECONDS
from flows.errors import ValidationError

IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"
# The longest statement_timeout/lock_timeout PostgreSQL takes, in seconds (2^31-1 ms); libpq's
# connect_timeout is a C int too.
PG_MAX_TIMEOUT = 2_147_483
EXTENSION = r"^[a-z_][a-z0-9_-]{0,62}$"


def _alias(name: str, *more: str) -> AliasChoices:
    return AliasChoices(name, f"OPSFLOW_{name.upper()}", *more)


class MaintenanceSettings(BaseSettings):
    # No populate_by_name: with it, pydantic-settings also reads a field's own prefixed name
    # (OPSFLOW_DATABASE_URL for database_url, the records database) from the environment and
    # .env files beside its aliases. Keyword arguments still work: each alias list holds the name.
    model_config = SettingsConfigDict(env_prefix="OPSFLOW_", extra="ignore", env_file_encoding="utf-8")

    environment: str = Field("development", description="Which `.env.<environment>` file is read.")
    database_url: SecretStr | None = Field(
        None,
        # OPSFLOW_TARGET_DATABASE_URL, else DATABASE_URL (the alias `database_url`, read without
        # the prefix); never OPSFLOW_DATABASE_URL: that is opsflow's records database.
        validation_alias=AliasChoices("OPSFLOW_TARGET_DATABASE_URL", "database_url"),
        description="PostgreSQL the procedures maintain: postgresql://USER[:PASSWORD]@HOST:PORT/DB.",
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=_alias("redis_url", "REDIS_URL"),
        description="Redis (or a compatible cache) for `cache` and `health`.",
    )
    migrations_dir: Path = Field(Path("deployments/migrations"), description="SQL migration files.")
    backup_dir: Path | None = Field(None, description="Backups; default OPSFLOW_HOME/backups.")
    expected_schema: Path = Field(
        Path("deployments/maintenance/schema.yaml"), description="Tables/columns/indexes `verify` expects."
    )
    schemas: list[str] = Field(["app"], description="Schemas `init` creates in the target database.")
    owner_role: str = Field("app_owner", pattern=IDENTIFIER, description="Role owning the database.")
    readonly_role: str = Field("app_readonly", pattern=IDENTIFIER, description="Role with read access.")
    extensions: list[str] = Field(["pgcrypto", "pg_trgm"], description="Extensions `extensions` deploys.")
    verify_cache_seconds: int = Field(
        3600, ge=0, le=MAX_DURATION_SECONDS, description="How long a schema verification is reused."
    )
    statement_timeout_seconds: float = Field(
        300, gt=0, le=PG_MAX_TIMEOUT, description="Longest one maintenance statement."
    )
    lock_timeout_seconds: float = Field(
        5, gt=0, le=PG_MAX_TIMEOUT, description="Longest wait for a lock before giving up."
    )
    connect_timeout_seconds: int = Field(
        5, ge=1, le=PG_MAX_TIMEOUT, description="Longest wait to connect to a service."
    )
    check_timeout_seconds: float = Field(
        5, gt=0, le=MAX_DURATION_SECONDS, description="Longest one health check may take."
    )
    health_endpoints: list[str] = Field(
        [], description="HTTP endpoints `health` checks: URL or name=URL; 2xx/3xx is up."
    )
    health_required: list[str] = Field(
        ["postgres", "redis"], description="Checks whose failure makes the status unhealthy."
    )
    disk_paths: list[Path] = Field([Path("/")], description="File systems `health` checks.")
    disk_warn_percent: float = Field(85, gt=0, le=100, description="Disk use that degrades health.")
    disk_critical_percent: float = Field(95, gt=0, le=100, description="Disk use that is unhealthy.")
    notify_channels: list[str] = Field(
        [], description="Channels (OPSFLOW_NOTIFY_<NAME> or the channels block) told about procedure runs."
    )
    notify_events: list[Literal["completed", "failed"]] = Field(
        ["failed"], description="Which procedure outcomes are sent to notify_channels."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[Callable[[], dict[str, Any]], ...]:
        return init_settings, env_settings, _without_records_url(dotenv_settings), file_secret_settings

    @field_validator("schemas", "extensions")
    @classmethod
    def _identifiers(cls, values: list[str], info: Any) -> list[str]:
        # Extension names may contain a dash (uuid-ossp); schema names may not.
        pattern = EXTENSION if info.field_name == "extensions" else IDENTIFIER
        for value in values:
            if not re.match(pattern, value):
                raise ValueError(f"{value!r} is not a plain lower-case name")
        return values

    @field_validator("database_url", "redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def backups(self) -> Path:
        if self.backup_dir is not None:
            return self.backup_dir.expanduser().resolve()
        home = Path(os.environ.get("OPSFLOW_HOME", Path.home() / ".opsflow")).expanduser()
        return (home / "backups").resolve()

    def require_database(self) -> str:
        """The target database URL, or a configuration error saying how to give one."""
        if self.database_url is None:
            raise ValidationError(
                "no target database: give --database-url or set OPSFLOW_TARGET_DATABASE_URL (or DATABASE_URL)"
            )
        return self.database_url.get_secret_value()


def _without_records_url(dotenv: PydanticBaseSettingsSource) -> Callable[[], dict[str, Any]]:
    """The `.env.<environment>` values, less the records database's URL.

    pydantic-settings hands back a line it does not know, `OPSFLOW_X=...`, as the extra `x`:
    for OPSFLOW_DATABASE_URL (the records database) that is `database_url`, which the target
    accepts as its own name. Kept only when the file really has a DATABASE_URL line."""

    def values() -> dict[str, Any]:
        data = dotenv()
        lines = {str(name).lower() for name in getattr(dotenv, "env_vars", {})}
        if "database_url" in data and "database_url" not in lines:
            del data["database_url"]
        return data

    return values


def load_settings(environment: str | None = None, **overrides: Any) -> MaintenanceSettings:
    """Settings for `environment` (default OPSFLOW_ENVIRONMENT), command-line `overrides` on top.

    Inside a flow run, an `opsflow-environment-settings` block named like the environment (see
    blocks/environment.py), when one is registered, sits above `.env.<environment>` and
    environment variables and below `overrides`: a deployment then carries only the
    environment's name. Overrides that are None were not given. A bad value raises
    `ValidationError` (exit 3) naming the setting and where it came from.
    """
    env = environment or os.environ.get("OPSFLOW_ENVIRONMENT") or "development"
    env_file = Path(f".env.{env}")
    given = {k: v for k, v in overrides.items() if v is not None}
    from_block = environment_block(env)
    try:
        return MaintenanceSettings(
            _env_file=env_file if env_file.is_file() else None, environment=env, **(from_block | given)
        )
    except PydanticValidationError as exc:
        problem = exc.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else "settings"
        if field in given:
            source = "--" + field.replace("_", "-")
        elif field in from_block:
            source = f"{field} in block opsflow-environment-settings/{env}"
        elif field.upper() in {"DATABASE_URL", "OPSFLOW_TARGET_DATABASE_URL"}:
            source = "OPSFLOW_TARGET_DATABASE_URL (or DATABASE_URL)"
        else:
            source = field.upper() if field.upper().startswith("OPSFLOW_") else f"OPSFLOW_{field.upper()}"
        raise ValidationError(f"setting {source}: {problem['msg']}") from None


def environment_block(environment: str) -> dict[str, Any]:
    """Values of the `opsflow-environment-settings/<environment>` block, inside a flow run when
    one is registered; else nothing. Outside runs (command-line checks) no API is asked."""
    try:
        from prefect.context import FlowRunContext
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return {}
    if FlowRunContext.get() is None:
        return {}
    from blocks.environment import EnvironmentSettings

    try:
        block = EnvironmentSettings.load(environment)
    except ValueError:  # no block of that name: settings come from the other sources
        return {}
    values = block.as_overrides()
    unknown = sorted(set(values) - set(MaintenanceSettings.model_fields))
    if unknown:
        raise ValidationError(
            f"block opsflow-environment-settings/{environment} sets unknown setting(s) {', '.join(unknown)}"
        )
    return values
