"""An environment's maintenance settings as a Prefect block (`--settings-block NAME`).

Values set here sit above `.env.<environment>` and environment variables and below
command-line options (flows/maintenance/settings.py). Secrets stay in secret fields or in a
nested `DatabaseConnection` block, so a deployment only names the block.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from blocks.database import DatabaseConnection


class EnvironmentSettings(Block):
    """Settings of one environment for opsflow's procedures; save it under the environment's
    name (`production`, `staging`): procedures run with `environment=production` use it."""

    _block_type_name = "opsflow environment settings"
    _block_type_slug = "opsflow-environment-settings"
    _description = "Target database, Redis and maintenance settings of one opsflow environment."

    database: DatabaseConnection | None = Field(None, description="The target PostgreSQL database.")
    redis_url: SecretStr | None = Field(None, description="Redis URL (secret: it may hold a password).")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Other settings by name, e.g. {'backup_dir': '/srv/backups', 'extensions': ['pgcrypto']}.",
    )

    def as_overrides(self) -> dict[str, Any]:
        """Keyword arguments for `MaintenanceSettings`."""
        values: dict[str, Any] = dict(self.settings)
        if self.database is not None:
            values["database_url"] = self.database.url()
        if self.redis_url is not None:
            values["redis_url"] = self.redis_url
        return values
