"""Notification channels as a Prefect block: channel name → apprise URLs (secret fields)."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class NotificationChannels(Block):
    """Apprise URLs per channel name (`slack`, `email`, `oncall`); workflows name channels in
    `notifications.channels`, procedures in their options. Save it as `default`.
    OPSFLOW_NOTIFY_<CHANNEL> environment variables take precedence over it."""

    _block_type_name = "opsflow notification channels"
    _block_type_slug = "opsflow-notification-channels"
    _description = "Apprise URLs by channel name for opsflow notifications (kept as secrets)."

    channels: dict[str, list[SecretStr]] = Field(
        default_factory=dict,
        description="e.g. {'slack': ['slack://T000/B000/XXX'], 'email': ['mailtos://user:pass@smtp.example.com']}",
    )
