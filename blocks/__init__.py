"""opsflow's Prefect blocks; register them with `prefect block register -m blocks`."""

from blocks.database import DatabaseConnection
from blocks.environment import EnvironmentSettings

__all__ = ["DatabaseConnection", "EnvironmentSettings"]
