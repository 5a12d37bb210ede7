"""`db vacuum|analyze|purge|audit|slow-queries`: routine PostgreSQL housekeeping commands."""

from __future__ import annotations
