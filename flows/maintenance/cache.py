"""`cache report|delete|fix-ttl`: Redis upkeep as Prefect flows (the Redis side: `cache_scan`).

Each task walks the keys with SCAN and retries only transient failures (Redis unreachable or
timing out); a retry starts the walk again, which is safe because UNLINK and EXPIRE ... NX are
idempotent. A second run changes nothing: the deleted keys are gone, the fixed keys have a TTL.
The Redis URL's password is never printed, logged or recorded; people see `redacted_url`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from flows.errors import EXIT_DRY_RUN
from flows.maintenance import cache_scan as scan
from flows.maintenance.record import finish, recorded
from flows.maintenance.retry import transient_retries
from flows.maintenance.settings import MaintenanceSettings, load_settings

TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False, **transient_retries()}


@task(name="redis-report", **TASK_OPTIONS)
def read_report(url: SecretStr, timeout: float, match: str, depth: int, delimiter: str) -> dict[str, Any]:
    where = scan.redacted_url(url.get_secret_value())
    with scan.redis_errors(where), scan.client(url.get_secret_value(), timeout) as conn:
        memory = scan.memory_info(conn)
        groups = scan.count_by_prefix(conn, match, depth, delimiter)
    return {"memory": memory, "groups": groups}


@task(name="redis-delete", **TASK_OPTIONS)
def delete_keys(url: SecretStr, timeout: float, match: str, batch_size: int, dry_run: bool) -> dict[str, int]:
    where = scan.redacted_url(url.get_secret_value())
    with scan.redis_errors(where), scan.client(url.get_secret_value(), timeout) as conn:
        return scan.delete_matching(conn, match, batch_size, dry_run)


@task(name="redis-fix-ttl", **TASK_OPTIONS)
def fix_ttl(
    url: SecretStr, timeout: float, match: str, ttl: int, batch_size: int, dry_run: bool
) -> dict[str, int]:
    where = scan.redacted_url(url.get_secret_value())
    with scan.redis_errors(where), scan.client(url.get_secret_value(), timeout) as conn:
        return scan.expire_without_ttl(conn, match, ttl, batch_size, dry_run)


def _target(environment: str | None, redis_url: SecretStr | None) -> tuple[MaintenanceSettings, str]:
    settings = load_settings(environment, redis_url=redis_url)
    return settings, scan.redacted_url(settings.redis_url.get_secret_value())


def prefix_rows(groups: dict[str, dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The `top` largest prefixes, most keys first; the rest summed up as one row."""
    ordered = sorted(groups.items(), key=lambda item: (-item[1]["keys"], item[0]))
    rows = [
        {
            "prefix": name,
            "keys": g["keys"],
            "no_ttl": g["no_ttl"],
            "types": ", ".join(f"{t} {n}" for t, n in sorted(g["types"].items(), key=lambda i: -i[1])),
        }
        for name, g in ordered[:top]
    ]
    rest = ordered[top:]
    if rest:
        rows.append(
            {
                "prefix": f"({len(rest)} more prefix{'es' if len(rest) > 1 else ''})",
                "keys": sum(g["keys"] for _, g in rest),
                "no_ttl": sum(g["no_ttl"] for _, g in rest),
                "types": "",
            }
        )
    return rows


@flow(name="cache-report", log_prints=True)
def cache_report(
    prefix_depth: int = 1,
    delimiter: str = ":",
    match: str = "*",
    top: int = 20,
    environment: str | None = None,
    redis_url: SecretStr | None = None,
) -> dict[str, Any]:
    """Memory use, key count, and keys (with and without a TTL) by prefix; changes nothing."""
    settings, where = _target(environment, redis_url)
    match = match or "*"
    params = {
        "redis": where,
        "match": match,
        "prefix_depth": prefix_depth,
        "delimiter": delimiter,
        "top": top,
    }
    with recorded("cache-report", params, settings) as outcome:
        scan.check_grouping(prefix_depth, delimiter, top)
        found = read_report(
            settings.redis_url, settings.connect_timeout_seconds, match, prefix_depth, delimiter
        )
        memory, groups = found["memory"], found["groups"]
        scanned = sum(g["keys"] for g in groups.values())
        no_ttl = sum(g["no_ttl"] for g in groups.values())
        outcome.details = {
            "redis": where,
            "memory": memory,
            "match": match,
            "keys_scanned": scanned,
            "keys_without_ttl": no_ttl,
            "prefix_count": len(groups),
            "prefixes": prefix_rows(groups, top),
        }
        limit = memory["maxmemory_human"] if memory["maxmemory"] else "no limit"
        outcome.message = (
            f"{where}: {memory['dbsize']} keys, {memory['used_memory_human']} used "
            f"(peak {memory['used_memory_peak_human']}, max {limit}); {scanned} matching {match!r} "
            f"in {len(groups)} prefixes, {no_ttl} without TTL"
        )
    return finish(outcome, table=outcome.details["prefixes"] or None)


@flow(name="cache-delete", log_prints=True)
def cache_delete(
    pattern: str,
    batch_size: int = 500,
    dry_run: bool = False,
    allow_all: bool = False,
    environment: str | None = None,
    redis_url: SecretStr | None = None,
) -> dict[str, Any]:
    """Delete the keys matching `pattern` (SCAN, then UNLINK in batches); dry run only counts."""
    settings, where = _target(environment, redis_url)
    params = {"redis": where, "pattern": pattern, "batch_size": batch_size, "dry_run": dry_run}
    with recorded("cache-delete", params | {"all": allow_all}, settings) as outcome:
        match = scan.check_delete_pattern(pattern, allow_all)
        scan.check_batch_size(batch_size)
        done = delete_keys(settings.redis_url, settings.connect_timeout_seconds, match, batch_size, dry_run)
        outcome.rows = done["deleted"]
        outcome.details = {"redis": where, "pattern": match, "dry_run": dry_run} | done
        if dry_run:
            outcome.exit_code = EXIT_DRY_RUN
            outcome.message = f"dry run: {done['matched']} key(s) match {match!r} in {where}; nothing deleted"
        elif done["deleted"]:
            outcome.message = (
                f"deleted {done['deleted']} key(s) matching {match!r} from {where} "
                f"in {done['batches']} batch(es) of up to {batch_size}"
            )
        else:
            outcome.message = f"no keys match {match!r} in {where}; nothing deleted"
    return finish(outcome)


@flow(name="cache-fix-ttl", log_prints=True)
def cache_fix_ttl(
    prefix: str,
    ttl: int | str,
    dry_run: bool = False,
    batch_size: int = 500,
    environment: str | None = None,
    redis_url: SecretStr | None = None,
) -> dict[str, Any]:
    """Give the keys under `prefix` that have no TTL one of `ttl` (3600, 90s, 15m, 1h, 7d)."""
    settings, where = _target(environment, redis_url)
    params = {"redis": where, "prefix": prefix, "ttl": str(ttl), "batch_size": batch_size, "dry_run": dry_run}
    with recorded("cache-fix-ttl", params, settings) as outcome:
        seconds = scan.parse_ttl(ttl)
        match = scan.glob_escape(scan.check_prefix(prefix)) + "*"
        scan.check_batch_size(batch_size)
        done = fix_ttl(
            settings.redis_url, settings.connect_timeout_seconds, match, seconds, batch_size, dry_run
        )
        outcome.rows = done["changed"]
        outcome.details = {
            "redis": where,
            "prefix": prefix,
            "ttl_seconds": seconds,
            "dry_run": dry_run,
        } | done
        counts = f"{done['without_ttl']} of {done['scanned']} key(s) under {prefix!r} in {where}"
        if dry_run:
            outcome.exit_code = EXIT_DRY_RUN
            outcome.message = f"dry run: {counts} have no TTL; nothing changed (would set {seconds}s)"
        elif done["changed"]:
            outcome.message = (
                f"set a TTL of {seconds}s on {done['changed']} key(s) under {prefix!r} in {where}"
            )
        else:
            outcome.message = f"every key under {prefix!r} in {where} has a TTL ({done['scanned']} scanned); nothing changed"
    return finish(outcome)
