"""Which URLs name the records database: the normalisation `db` procedures refuse by (pure)."""

from __future__ import annotations

import pytest

from flows.maintenance.guard import same_database
from flows.maintenance.pg import Target

RECORDS = "postgresql://postgres@127.0.0.1:5432/records"


def params(url: str) -> dict[str, str]:
    return dict(Target.from_url(url).params)


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("postgresql+psycopg://postgres@127.0.0.1:5432/records", True),
        ("postgres://other:pw@localhost/records", True),  # user and password do not matter
        ("postgresql://postgres@[::1]:5432/records", True),
        ("postgresql://postgres@127.0.0.2/records", True),  # all of 127/8 is this machine
        ("postgresql:///records?host=/var/run/postgresql", True),  # the Unix socket too
        ("host=localhost port=5432 dbname=records", True),
        ("postgresql://postgres@db.internal,127.0.0.1/records", True),  # one of its hosts
        ("postgresql://postgres@127.0.0.1:5433/records", False),  # another server
        ("postgresql://postgres@127.0.0.1/app", False),  # another database
        ("postgresql://postgres@db.internal/records", False),  # names are not resolved
    ],
)
def test_same_database_after_normalising_the_url(url, same, monkeypatch):
    for name in ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    assert same_database(params(url), params(RECORDS)) is same
    assert same_database(params(RECORDS), params(url)) is same
