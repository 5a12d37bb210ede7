"""A PostgreSQL connection as a Prefect block: deployments name it instead of carrying a URL."""

from __future__ import annotations

from urllib.parse import quote

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class DatabaseConnection(Block):
    """Where a PostgreSQL database is and how to log in; the password is a secret field
    (stored encrypted by Prefect, shown masked in the UI, never in flow-run parameters)."""

    _block_type_name = "opsflow database connection"
    _block_type_slug = "opsflow-database-connection"
    _description = "PostgreSQL connection for opsflow procedures; the password is kept as a secret."

    host: str = Field("127.0.0.1", description="Server host name or address.")
    port: int = Field(5432, ge=1, le=65535, description="Server port.")
    database: str = Field(..., description="Database name.")
    user: str = Field("postgres", description="User to log in as.")
    password: SecretStr | None = Field(None, description="Password (secret).")
    sslmode: str | None = Field(None, description="libpq sslmode, e.g. require or verify-full.")

    def url(self) -> SecretStr:
        """The connection URL, wrapped so it is not printed by accident."""
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password.get_secret_value(), safe="")
        query = f"?sslmode={quote(self.sslmode)}" if self.sslmode else ""
        return SecretStr(
            f"postgresql://{auth}@{self.host}:{self.port}/{quote(self.database, safe='')}{query}"
        )
