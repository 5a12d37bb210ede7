"""opsflow's Prefect blocks; register them with `prefect block register -m blocks`."""

from blocks.database import DatabaseConnection
from blocks.environment import EnvironmentSettings
from blocks.notifications import NotificationChannels

__all__ = ["DatabaseConnection", "EnvironmentSettings", "NotificationChannels"]
