"""Which URLs name the records database: the normalisation `db` procedures refuse by (pure)."""

from __future__ import annotations

import socket

import pytest

from flows.maintenance.guard import THIS_MACHINE, endpoints, normal_host, normal_port, same_database
from flows.maintenance.pg import Target

RECORDS = "postgresql://postgres@127.0.0.1:5432/records"


def params(url: str) -> dict[str, str]:
    return dict(Target.from_url(url).params)


@pytest.fixture(autouse=True)
def _no_libpq_environment(monkeypatch):
    for name in ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)


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
        ("postgresql://postgres@127.0.0.1:05432/records", True),  # ports are numbers
        ("postgresql://postgres@127.0.0.1:+5432/records", True),
        ("postgresql://postgres@2130706433/records", True),  # inet_aton's address forms
        ("postgresql://postgres@0x7f000001/records", True),
        ("postgresql://postgres@0177.0.0.1/records", True),
        ("postgresql://postgres@127.1/records", True),
        ("postgresql://postgres@0.0.0.0/records", True),  # unspecified: reaches this machine
        ("postgresql://postgres@0/records", True),
        ("postgresql://postgres@[::]/records", True),
        ("postgresql://postgres@[::ffff:127.0.0.1]/records", True),  # v4-mapped
        ("postgresql://postgres@[::ffff:7f00:1]/records", True),
        ("postgresql://postgres@LOCALHOST./records", True),
        ("postgresql://postgres@db.localhost/records", True),
        ("host=0x7f000001 port=05432 dbname=records", True),
        ("postgresql://postgres@db.internal/records?hostaddr=127.0.0.1", True),  # hostaddr wins
        ("postgresql://postgres@127.0.0.1:5433/records", False),  # another server
        ("postgresql://postgres@127.0.0.1/app", False),  # another database
        ("postgresql://postgres@0x7f000001/app", False),
        ("postgresql://postgres@db.internal/records", False),  # names are not resolved here
        ("postgresql://postgres@127.0.0.1/records?hostaddr=198.51.100.200", False),  # not this machine
    ],
)
def test_same_database_after_normalising_the_url(url, same):
    assert same_database(params(url), params(RECORDS)) is same
    assert same_database(params(RECORDS), params(url)) is same


@pytest.mark.parametrize(
    ("environment", "url", "same"),
    [
        ({"PGPORT": "05432"}, "postgresql://postgres@127.0.0.1/records", True),
        ({"PGPORT": "5433"}, "postgresql://postgres@127.0.0.1/records", False),
        ({"PGHOSTADDR": "127.0.0.1"}, "postgresql://postgres@db.internal/records", True),  # over host
        ({"PGHOST": "0x7f000001"}, "postgresql:///records", True),
        ({"PGHOST": "db.internal"}, "postgresql://postgres@127.0.0.1/records", True),  # host given
        ({"PGDATABASE": "records"}, "host=127.0.0.1 user=postgres", True),
    ],
)
def test_libpq_environment_is_read_as_libpq_reads_it(environment, url, same, monkeypatch):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert same_database(params(url) if "://" in url else _conninfo(url), params(RECORDS)) is same


def _conninfo(text: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    return {k: str(v) for k, v in conninfo_to_dict(text).items()}


def test_pairs_of_hosts_and_addresses():
    found = endpoints({"host": "a.example,b.example", "hostaddr": ",10.1.2.3", "port": "5432,6432"})
    assert found == {("a.example", 5432), ("10.1.2.3", 6432)}
    assert normal_port(" 5432 ") == 5432 and normal_port("") == 5432 and normal_port("x") == "x"


def _own_address() -> str | None:
    """An address of a non-loopback interface of this machine, found without sending anything."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.123", 9))  # routing only; UDP connect sends nothing
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_an_address_of_this_machines_interfaces_is_this_machine():
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    assert normal_host(address) == THIS_MACHINE
    assert same_database(params(f"postgresql://postgres@{address}/records"), params(RECORDS))
    assert normal_host("198.51.100.200") == "198.51.100.200"  # TEST-NET: nobody's
