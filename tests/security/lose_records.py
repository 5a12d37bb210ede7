"""A batch processor that takes the records database away mid-batch, for test_bad_input.py.

It lives in a module of its own because the batch under test imports it: a test module would
bring tests/conftest.py along, which points the records at a scratch SQLite file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import psycopg

LOSE_AT = "OPSFLOW_TEST_LOSE_RECORDS_AT"


def lose_records_at(input_path: str, output_path: str) -> None:
    """A processor (module:function) that copies its file and, at the file named in
    $OPSFLOW_TEST_LOSE_RECORDS_AT, makes the records database refuse every connection and
    ends those open: the batch then loses its database between two files, as in an outage."""
    shutil.copyfile(input_path, output_path)
    plan = json.loads(os.environ[LOSE_AT])
    if Path(input_path).name == plan["at"]:
        with psycopg.connect(plan["admin"], autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{plan["database"]}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (plan["database"],),
            )
