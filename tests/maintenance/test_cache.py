"""`cache report|delete|fix-ttl` against a real Redis (database 15, a key prefix of each test's own)."""

from __future__ import annotations

import json

import pytest
import redis
from pydantic import SecretStr

from flows.errors import ConnectionFailure, ValidationError
from flows.maintenance import cache_scan as scan
from flows.maintenance.cache import cache_delete, cache_fix_ttl, cache_report
from flows.records.db import session
from flows.records.procedures import list_executions

from .conftest import opsflow

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api")]

UNREACHABLE = "redis://:hunter2@127.0.0.1:1/0"


@pytest.fixture
def client(redis_url):
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


def runs(name: str, needle: str) -> list:
    with session() as db:
        return [r for r in list_executions(db, name, limit=50) if needle in r.parameters]


@pytest.mark.parametrize(
    ("key", "depth", "expected"),
    [
        ("user:42:profile", 1, "user:"),
        ("user:42:profile", 2, "user:42:"),
        ("user:42", 2, "user:"),
        ("user:42", 5, "user:"),
        ("counter", 1, scan.NO_PREFIX),
        ("a::b", 2, "a::"),
    ],
)
def test_prefix_of(key, depth, expected):
    assert scan.prefix_of(key, depth, ":") == expected


def test_pattern_ttl_and_url_checks():
    for everything in ("", " ", "*", "***"):
        with pytest.raises(ValidationError, match="matches every key"):
            scan.check_delete_pattern(everything, allow_all=False)
        assert scan.check_delete_pattern(everything, allow_all=True) == "*"
    assert scan.check_delete_pattern("session:*", allow_all=False) == "session:*"
    assert scan.glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
    assert [scan.parse_ttl(v) for v in ("3600", 90, "90s", "15m", "1h", "7d", "1.5s")] == [
        3600, 90, 90, 900, 3600, 604800, 2,
    ]  # fmt: skip
    for bad in ("0", "250ms", "soon", "-5"):
        with pytest.raises(ValidationError, match="--ttl"):
            scan.parse_ttl(bad)
    assert scan.redacted_url("redis://user:hunter2@cache.local:6380/3") == "redis://cache.local:6380/3"
    with pytest.raises(ValidationError, match="redis://"):
        scan.redacted_url("http://:hunter2@x/1")


def test_report_counts_keys_by_prefix(client, redis_prefix, redis_url):
    p = redis_prefix
    client.mset({f"{p}user:{i}": "x" for i in range(30)})
    for i in range(20):
        client.hset(f"{p}sess:{i}", "a", "1")
        if i < 5:
            client.expire(f"{p}sess:{i}", 1000)
    client.set(f"{p}lonely", "1")

    result = cache_report(prefix_depth=2, match=f"{p}*", top=2, redis_url=SecretStr(redis_url))

    assert result["exit_code"] == 0
    details = result["details"]
    assert (
        details["keys_scanned"] == 51 and details["keys_without_ttl"] == 46 and details["prefix_count"] == 3
    )
    assert details["prefixes"] == [
        {"prefix": f"{p}user:", "keys": 30, "no_ttl": 30, "types": "string 30"},
        {"prefix": f"{p}sess:", "keys": 20, "no_ttl": 15, "types": "hash 20"},
        {"prefix": "(1 more prefix)", "keys": 1, "no_ttl": 1, "types": ""},
    ]
    memory = details["memory"]
    assert memory["dbsize"] >= 51 and memory["used_memory"] > 0 and memory["used_memory_human"]
    assert "mem_fragmentation_ratio" in memory and "maxmemory" in memory
    assert runs("cache-report", p)[0].status == "succeeded"


def test_delete_by_pattern_in_batches_dry_run_first_then_idempotent(client, redis_prefix, redis_url):
    p, url = redis_prefix, SecretStr(redis_url)
    client.mset({f"{p}del:{i}": i for i in range(2500)})
    client.mset({f"{p}keep:{i}": i for i in range(10)} | {f"{p}delx": 1})

    dry = cache_delete(f"{p}del:*", batch_size=300, dry_run=True, redis_url=url)
    assert dry["exit_code"] == 10 and dry["details"]["matched"] == 2500 and dry["rows"] == 0
    assert client.exists(*[f"{p}del:{i}" for i in range(2500)]) == 2500

    done = cache_delete(f"{p}del:*", batch_size=300, redis_url=url)
    assert done["exit_code"] == 0 and done["rows"] == 2500 and done["details"]["batches"] == 9
    assert not list(client.scan_iter(match=f"{p}del:*", count=1000))
    assert sorted(client.scan_iter(match=f"{p}*", count=1000)) == sorted(
        [f"{p}keep:{i}".encode() for i in range(10)] + [f"{p}delx".encode()]
    )

    again = cache_delete(f"{p}del:*", batch_size=300, redis_url=url)
    assert again["rows"] == 0 and "nothing deleted" in again["message"]
    rows = runs("cache-delete", p)
    assert [(r.status, r.rows_affected) for r in rows] == [
        ("succeeded", 0),
        ("succeeded", 2500),
        ("dry_run", 0),
    ]


def test_delete_refuses_a_pattern_matching_everything(client, redis_prefix, redis_url):
    client.set(f"{redis_prefix}k", 1)
    state = cache_delete("*", redis_url=SecretStr(redis_url), return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValidationError) and "--all" in str(error)
    assert client.exists(f"{redis_prefix}k") == 1
    with session() as db:
        row = list_executions(db, "cache-delete", limit=1)[0]
    assert row.exit_code == 3 and json.loads(row.parameters)["pattern"] == "*"


def test_fix_ttl_only_on_keys_without_one(client, redis_prefix, redis_url):
    p, url = redis_prefix, SecretStr(redis_url)
    client.mset({f"{p}ft:{i}": i for i in range(40)} | {f"{p}ftx": 1, f"{p}a*1": 1, f"{p}ab": 1})
    for i in range(10):
        client.set(f"{p}ft:keep{i}", i, ex=1000)

    dry = cache_fix_ttl(f"{p}ft:", "1h", dry_run=True, batch_size=7, redis_url=url)
    assert dry["exit_code"] == 10 and dry["rows"] == 0
    assert (dry["details"]["scanned"], dry["details"]["without_ttl"]) == (50, 40)
    assert client.ttl(f"{p}ft:0") == -1

    done = cache_fix_ttl(f"{p}ft:", "1h", batch_size=7, redis_url=url)
    assert done["rows"] == 40 and done["details"]["ttl_seconds"] == 3600
    assert all(3500 < client.ttl(f"{p}ft:{i}") <= 3600 for i in range(40))
    assert all(0 < client.ttl(f"{p}ft:keep{i}") <= 1000 for i in range(10))
    assert client.ttl(f"{p}ftx") == -1

    again = cache_fix_ttl(f"{p}ft:", "1h", batch_size=7, redis_url=url)
    assert again["rows"] == 0 and "nothing changed" in again["message"]

    # The prefix is literal: its glob characters match only themselves.
    star = cache_fix_ttl(f"{p}a*", 60, redis_url=url)
    assert star["rows"] == 1 and client.ttl(f"{p}a*1") > 0 and client.ttl(f"{p}ab") == -1
    statuses = [r.status for r in runs("cache-fix-ttl", f"{p}ft:")]
    assert statuses == ["succeeded", "succeeded", "dry_run"]


def test_unreachable_redis_is_a_connection_failure_without_the_password():
    state = cache_report(redis_url=SecretStr(UNREACHABLE), return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConnectionFailure) and error.exit_code == 4
    assert "127.0.0.1:1" in str(error) and "hunter2" not in str(error)
    with session() as db:
        row = list_executions(db, "cache-report", limit=1)[0]
    assert row.exit_code == 4 and "hunter2" not in row.parameters + (row.message or "")
    assert "redis://127.0.0.1:1/0" in row.parameters

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(state.state_details.flow_run_id)
        logs = prefect.read_logs()
    assert "hunter2" not in str(run.parameters) + str(run.state.message)
    assert not any("hunter2" in log.message for log in logs)


def test_cli_dry_run_json_and_guard(client, redis_prefix, redis_url):
    client.mset({f"{redis_prefix}c:{i}": i for i in range(12)})
    dry = opsflow("cache", "delete", f"{redis_prefix}c:*", "--dry-run", "--redis-url", redis_url)
    assert dry.returncode == 10, dry.stderr
    assert "dry run: 12 key(s) match" in dry.stdout and client.exists(f"{redis_prefix}c:0")

    report = opsflow("cache", "report", "--match", f"{redis_prefix}*", "--json", "--redis-url", redis_url)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["details"]["prefixes"][0] == {
        "prefix": redis_prefix,
        "keys": 12,
        "no_ttl": 12,
        "types": "string 12",
    }

    guard = opsflow("cache", "delete", "*", "--redis-url", redis_url)
    assert guard.returncode == 3 and "--all" in guard.stderr and "Beginning flow run" not in guard.stderr
    assert client.exists(f"{redis_prefix}c:0")


def test_cli_unreachable_exits_4_with_one_line_and_no_password():
    done = opsflow("cache", "fix-ttl", "s:", "--ttl", "15m", "--redis-url", UNREACHABLE)
    assert done.returncode == 4, done.stderr
    errors = [line for line in done.stderr.splitlines() if "[ERROR] [cache-fix-ttl]" in line]
    assert errors and "is unreachable" in errors[-1]
    assert "hunter2" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
