"""Maintenance settings: defaults < .env.<environment> < environment variables < options."""

from __future__ import annotations

import pytest

from flows.errors import ValidationError
from flows.maintenance.settings import load_settings
from flows.secrets import safe_parameters, scrub_text

from .conftest import opsflow


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in (
        "OPSFLOW_ENVIRONMENT",
        "OPSFLOW_TARGET_DATABASE_URL",
        "DATABASE_URL",
        "OPSFLOW_DISK_WARN_PERCENT",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_precedence(in_tmp, monkeypatch):
    assert load_settings().disk_warn_percent == 85 and load_settings().database_url is None
    (in_tmp / ".env.staging").write_text(
        "OPSFLOW_DISK_WARN_PERCENT=70\nOPSFLOW_TARGET_DATABASE_URL=postgresql://app:s3cret@db/staging\n"
    )
    staging = load_settings("staging")
    assert staging.disk_warn_percent == 70 and staging.environment == "staging"
    assert staging.require_database() == "postgresql://app:s3cret@db/staging"
    assert "s3cret" not in repr(staging) and "s3cret" not in str(staging.model_dump())
    assert load_settings("production").disk_warn_percent == 85  # another environment's file is not read
    monkeypatch.setenv("OPSFLOW_DISK_WARN_PERCENT", "60")
    assert load_settings("staging").disk_warn_percent == 60
    assert load_settings("staging", disk_warn_percent=50).disk_warn_percent == 50
    monkeypatch.setenv("OPSFLOW_ENVIRONMENT", "staging")
    assert load_settings().environment == "staging"
    monkeypatch.setenv("DATABASE_URL", "postgresql://seed@db/seed003")  # seed 003's name works too
    assert load_settings("production").require_database() == "postgresql://seed@db/seed003"


def test_bad_values_name_the_setting(in_tmp, monkeypatch):
    monkeypatch.setenv("OPSFLOW_DISK_WARN_PERCENT", "lots")
    with pytest.raises(ValidationError, match="OPSFLOW_DISK_WARN_PERCENT"):
        load_settings()
    monkeypatch.delenv("OPSFLOW_DISK_WARN_PERCENT")
    with pytest.raises(ValidationError, match="--schemas"):
        load_settings(schemas=["app; DROP SCHEMA x"])
    with pytest.raises(ValidationError, match="no target database"):
        load_settings().require_database()


def test_secrets_are_scrubbed_from_records():
    safe = safe_parameters({"database_url": "postgresql://u:pw@h/db", "api_token": "t0k", "n": 3, "x": None})
    assert safe == {"database_url": "postgresql://u:***@h/db", "api_token": "**********", "n": 3}
    assert (
        scrub_text("failed: redis://:hunter2@127.0.0.1:1/0 down") == "failed: redis://:***@127.0.0.1:1/0 down"
    )


def test_cli_bad_setting_exits_3(monkeypatch):
    import os

    env = dict(os.environ, OPSFLOW_LOCK_TIMEOUT_SECONDS="-1")
    done = opsflow("db", "init", "--database-url", "postgresql://x@127.0.0.1/y", env=env)
    assert done.returncode == 3 and "OPSFLOW_LOCK_TIMEOUT_SECONDS" in done.stderr
