"""Redis upkeep without Prefect: what the `cache` procedures compute and how they reach Redis.

Pure helpers first (prefix grouping, pattern and TTL checks, a printable URL), then the Redis
side: a client with no retries of its own (Prefect's task retries decide), errors turned into
opsflow's (unreachable or refused is `ConnectionFailure`, exit 4; a missing ACL permission is
`PermissionFailure`, exit 5), and the three key walks. Keys are only ever found with SCAN and a
COUNT hint, never KEYS, so a large cache is never blocked; they stay bytes, so binary keys work.
SCAN may return a key twice while Redis rehashes: counts on a changing cache are approximate.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flows.errors import ConnectionFailure, OpsflowError, PermissionFailure, ValidationError
from flows.secrets import scrub_text

NO_PREFIX = "(no prefix)"
MAX_BATCH = 10_000
COMMAND_TIMEOUT_SECONDS = 30.0
MEMORY_FIELDS = (
    "used_memory",
    "used_memory_human",
    "used_memory_peak_human",
    "maxmemory",
    "maxmemory_human",
    "maxmemory_policy",
    "mem_fragmentation_ratio",
)
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def key_text(key: bytes | str) -> str:
    return key if isinstance(key, str) else key.decode("utf-8", "backslashreplace")


def prefix_of(key: str, depth: int, delimiter: str) -> str:
    """The first `depth` delimiter-separated parts of `key`, with the delimiter after them; the
    key's own last part never counts (`user:42` at depth 2 is under `user:`)."""
    parts = key.split(delimiter, depth)
    if len(parts) == 1:
        return NO_PREFIX
    return delimiter.join(parts[: min(depth, len(parts) - 1)]) + delimiter


def glob_escape(text: str) -> str:
    """`text` as a literal inside a SCAN MATCH pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def matches_everything(pattern: str) -> bool:
    return not pattern.strip() or set(pattern.strip()) == {"*"}


def check_delete_pattern(pattern: str, allow_all: bool) -> str:
    """The pattern to delete by; one that matches every key is refused unless `allow_all`."""
    if matches_everything(pattern):
        if not allow_all:
            raise ValidationError(
                f"pattern {pattern!r} matches every key: give a narrower pattern, or --all to empty the database"
            )
        return "*"
    return pattern


def check_prefix(prefix: str) -> str:
    if not prefix:
        raise ValidationError("give a key prefix such as 'session:' (an empty prefix would be every key)")
    return prefix


def check_batch_size(size: int) -> int:
    if not 1 <= size <= MAX_BATCH:
        raise ValidationError(f"--batch-size must be between 1 and {MAX_BATCH}, not {size}")
    return size


def check_grouping(depth: int, delimiter: str, top: int) -> None:
    if depth < 1:
        raise ValidationError(f"--prefix-depth must be 1 or more, not {depth}")
    if not delimiter:
        raise ValidationError("--delimiter must not be empty")
    if top < 1:
        raise ValidationError(f"--top must be 1 or more, not {top}")


def parse_ttl(value: str | int) -> int:
    """Whole seconds (at least 1) from 3600, '90s', '15m', '1h' or '7d'."""
    from flows.cli_options import duration_option

    seconds = duration_option(value, "--ttl")
    if seconds < 1:
        raise ValidationError(f"--ttl must be at least one second, not {value!r}")
    return math.ceil(seconds)


def redacted_url(url: str) -> str:
    """The Redis URL as people may see it: scheme, host, port and database, never credentials."""
    try:
        parts = urlsplit(url.strip())
        if parts.scheme == "unix":
            return f"unix://{parts.path}"
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("scheme")
        db = parts.path.strip("/") or parse_qs(parts.query).get("db", ["0"])[0]
        return f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}/{db}"
    except ValueError:
        raise ValidationError(
            "the Redis URL must look like redis://[:PASSWORD@]HOST:PORT/DB (or rediss://, unix://)"
        ) from None


def client(url: str, connect_timeout: float) -> redis.Redis:
    """A client that does not retry by itself; nothing is sent until the first command."""
    redacted_url(url)
    try:
        return redis.Redis.from_url(
            url.strip(),
            socket_connect_timeout=connect_timeout,
            socket_timeout=max(COMMAND_TIMEOUT_SECONDS, connect_timeout),
            retry=Retry(NoBackoff(), 0),
            client_name="opsflow",
        )
    except ValueError as exc:
        raise ValidationError(f"the Redis URL is not valid: {scrub_text(str(exc))}") from None


@contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """Redis errors as opsflow's, one line, without credentials."""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise ConnectionFailure(f"Redis at {where} refused the credentials: {scrub_text(str(exc))}") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConnectionFailure(f"Redis at {where} is unreachable: {scrub_text(str(exc))}") from None
    except redis.exceptions.NoPermissionError as exc:
        raise PermissionFailure(f"Redis at {where} refused a command: {scrub_text(str(exc))}") from None
    except redis.RedisError as exc:
        raise OpsflowError(f"Redis at {where}: {type(exc).__name__}: {scrub_text(str(exc))}") from None


def scan_batches(conn: redis.Redis, match: str, count: int) -> Iterator[list[bytes]]:
    """Lists of at most `count` keys matching `match`, from SCAN ... MATCH ... COUNT."""
    cursor, pending = 0, []
    while True:
        cursor, keys = conn.scan(cursor=cursor, match=match, count=count)
        pending.extend(keys)
        while len(pending) >= count:
            yield pending[:count]
            pending = pending[count:]
        if cursor == 0:
            break
    if pending:
        yield pending


def memory_info(conn: redis.Redis) -> dict[str, Any]:
    info = conn.info("memory")
    return {name: info.get(name) for name in MEMORY_FIELDS} | {"dbsize": conn.dbsize()}


def count_by_prefix(
    conn: redis.Redis, match: str, depth: int, delimiter: str, count: int = 1000
) -> dict[str, dict[str, Any]]:
    """Per prefix: keys, keys without a TTL, and keys of each type."""
    groups: dict[str, dict[str, Any]] = {}
    for keys in scan_batches(conn, match, count):
        pipe = conn.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
            pipe.ttl(key)
        answers = pipe.execute()
        for key, kind, ttl in zip(keys, answers[::2], answers[1::2], strict=True):
            if ttl == -2:  # gone since SCAN saw it
                continue
            group = groups.setdefault(
                prefix_of(key_text(key), depth, delimiter), {"keys": 0, "no_ttl": 0, "types": Counter()}
            )
            group["keys"] += 1
            group["no_ttl"] += ttl == -1
            group["types"][key_text(kind)] += 1
    return groups


def delete_matching(conn: redis.Redis, match: str, batch_size: int, dry_run: bool) -> dict[str, int]:
    """UNLINK (or, in a dry run, only count) the keys matching `match`, `batch_size` at a time."""
    matched = deleted = batches = 0
    for keys in scan_batches(conn, match, batch_size):
        matched += len(keys)
        if not dry_run:
            deleted += conn.unlink(*keys)
            batches += 1
    return {"matched": matched, "deleted": deleted, "batches": batches}


def expire_without_ttl(
    conn: redis.Redis, match: str, ttl: int, batch_size: int, dry_run: bool
) -> dict[str, int]:
    """Set `ttl` on the keys matching `match` that have none (TTL -1); keys with a TTL keep it.
    EXPIRE ... NX (Redis 7+) also leaves alone a key that got a TTL after we looked."""
    nx = int(str(conn.info("server").get("redis_version", "0")).split(".")[0] or 0) >= 7
    scanned = without = changed = 0
    for keys in scan_batches(conn, match, batch_size):
        pipe = conn.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
        targets = [key for key, left in zip(keys, pipe.execute(), strict=True) if left == -1]
        scanned += len(keys)
        without += len(targets)
        if targets and not dry_run:
            pipe = conn.pipeline(transaction=False)
            for key in targets:
                pipe.expire(key, ttl, nx=True) if nx else pipe.expire(key, ttl)
            changed += sum(bool(done) for done in pipe.execute())
    return {"scanned": scanned, "without_ttl": without, "changed": changed}
