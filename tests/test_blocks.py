"""Blocks: registered with `prefect block register -m blocks`; an environment's block feeds the
maintenance settings so a deployment carries only the environment's name, never a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from uuid import uuid4

import psycopg
import pytest
from pydantic import SecretStr

from blocks import DatabaseConnection, EnvironmentSettings
from flows.errors import ValidationError
from flows.maintenance.init import init_database
from tests.conftest import ROOT
from tests.maintenance.conftest import pg_admin_url, scratch_db_name  # noqa: F401

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api")]


def test_register_the_block_types():
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for slug in (
            "opsflow-database-connection",
            "opsflow-environment-settings",
            "opsflow-notification-channels",
        ):
            block_type = client.read_block_type_by_slug(slug)
            assert block_type.name.startswith("opsflow")


def test_database_url_is_built_and_quoted():
    block = DatabaseConnection(host="db", database="app", user="me", password=SecretStr("p@ss/w:rd"))
    assert block.url().get_secret_value() == "postgresql://me:p%40ss%2Fw%3Ard@db:5432/app"
    assert "p@ss" not in repr(block) and "p@ss" not in str(block.url())


def test_environment_block_drives_a_procedure(pg_admin_url, scratch_db_name):  # noqa: F811
    from prefect.client.orchestration import get_client

    name = f"blocktest-{uuid4().hex[:8]}"
    host = pg_admin_url.split("@", 1)[1].split("/", 1)[0]
    database = DatabaseConnection(
        host=host.split(":")[0],
        port=int(host.split(":")[1]),
        database=scratch_db_name,
        user="postgres",
        password=SecretStr("not-needed-with-trust"),
    )
    database.save(f"{name}-db")
    EnvironmentSettings(database=database, settings={"schemas": ["blockapp"]}).save(name)

    state = init_database(environment=name, return_state=True)
    assert state.is_completed(), state.message
    with psycopg.connect(f"{pg_admin_url.rsplit('/', 1)[0]}/{scratch_db_name}") as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'blockapp'").fetchone()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.parameters["environment"] == name and run.parameters["database_url"] is None
    assert "not-needed-with-trust" not in str(run.parameters)

    EnvironmentSettings(settings={"shemas": ["x"]}).save(name, overwrite=True)
    error = init_database(environment=name, return_state=True).result(raise_on_failure=False)
    assert isinstance(error, ValidationError) and "shemas" in str(error)
