"""The health checks themselves: which to run (`plan_checks`) and running one (`run_check`).

No Prefect here: the flow runs each check as a task, `health serve` runs them in a thread pool.
Every check is bounded twice: its client library gets the timeout (libpq's connect_timeout and
statement_timeout, redis-py's socket timeouts without retries, httpx's timeouts), and
`run_check` stops waiting when the timeout has passed even if the library has not given up
(libpq rounds connect timeouts up to 2 s, a name lookup or a hung NFS mount ignores them all);
the abandoned thread is a daemon and ends with its own timeout.

A check says *why* it is down: `unreachable` or `timeout` (no answer: exit 4 when the check is
required), `failed` (it answered, wrongly: exit 1 when required), `critical` (disk above the
critical threshold: always unhealthy), `not_configured` (nothing to check: skipped, or down
when the check is required). Targets are shown without passwords; errors are scrubbed of them.
"""

from __future__ import annotations

import importlib
import math
import re
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from flows.errors import ConnectionFailure, ValidationError
from flows.secrets import scrub_text

KINDS = ("postgres", "redis", "disk", "prefect", "http")
UP, DEGRADED, DOWN, SKIPPED = "up", "degraded", "down", "skipped"
# Reasons a check is not up; the first two mean "could not be reached" (exit 4 when required).
UNREACHABLE, TIMEOUT, FAILED, CRITICAL, WARN, NOT_CONFIGURED = (
    "unreachable",
    "timeout",
    "failed",
    "critical",
    "warn",
    "not_configured",
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")
_SECRET_KEYS = re.compile(r"pass|secret|token|key|auth|credential|signature|sig$", re.I)
MAX_URL = 2048


@dataclass
class Check:
    """One check to run: what it checks (`target` may hold a password), as people see it (`shown`)."""

    name: str
    kind: str
    shown: str
    required: bool = False
    target: SecretStr | None = None
    warn_percent: float | None = None
    critical_percent: float | None = None


@dataclass
class CheckResult:
    """What one check found; `error` and `target` never hold a password."""

    name: str
    kind: str
    status: str
    required: bool
    target: str
    reason: str = "ok"
    response_time_ms: float | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def unreachable(self) -> bool:
        return self.status == DOWN and self.reason in (UNREACHABLE, TIMEOUT)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- what to check ----------------------------------------------------------------------------


def display_url(url: str) -> str:
    """`url` as people may see it: `user:***@`, secret-looking query values as ***."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = urllib.parse.urlencode([(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in pairs])
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    has_credentials: bool


def _shown(text: str) -> str:
    """Part of a rejected value, to say which one: without anything that may be a password."""
    if "://" in text:
        return display_url(text)[:100]
    return "<hidden>" if "@" in text else text[:40]


def parse_endpoint(spec: str) -> Endpoint:
    """`URL` or `name=URL`, http(s) only, one line, a host; a bad one is a `ValidationError`."""
    text = spec.strip() if isinstance(spec, str) else ""
    if not text:
        raise ValidationError("an endpoint is empty: give URL or name=URL")
    if len(text) > MAX_URL:
        raise ValidationError(f"an endpoint is longer than {MAX_URL} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValidationError("an endpoint contains spaces or control characters: give URL or name=URL")
    name: str | None = None
    head, sep, rest = text.partition("=")
    if sep and "://" not in head:
        if not _NAME.match(head):
            raise ValidationError(
                f"endpoint name {head[:40]!r} is not valid: letters, digits and _ . : / - (100 at most)"
            )
        name, text = head, rest
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"endpoint {_shown(text)!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError(f"endpoint {_shown(text)!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValidationError(f"endpoint {display_url(text)!r} names no host")
    if name is None:
        host = parts.hostname if port is None else f"{parts.hostname}:{port}"
        name = (host + parts.path.rstrip("/"))[:100]
    secret_query = any(_SECRET_KEYS.search(k) for k, _ in urllib.parse.parse_qsl(parts.query))
    return Endpoint(name=name, url=text, has_credentials=parts.password is not None or secret_query)


def reject_credentials(specs: Iterable[str], where: str = "--endpoint") -> None:
    """Endpoints given as parameters or options are shown to Prefect and `ps`: no secrets there."""
    for spec in specs:
        endpoint = parse_endpoint(spec)
        if endpoint.has_credentials:
            raise ValidationError(
                f"{where} {display_url(endpoint.url)!r} carries a password or token: "
                "configure it in OPSFLOW_HEALTH_ENDPOINTS (or .env.<env>) instead"
            )


def _redis_target(url: str) -> str:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValidationError(
            f"the Redis URL {display_url(url)!r} must start with redis://, rediss:// or unix://"
        )
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - parsing is the check
    except ValueError as exc:
        raise ValidationError(f"the Redis URL {display_url(url)!r} is not valid: {exc}") from None
    return display_url(url)


def plan_checks(settings: Any, prefect_api_url: str | None) -> list[Check]:
    """The checks `settings` ask for, validated (a bad value is a `ValidationError`, exit 3).

    Always: postgres, redis, the Prefect API, each disk path, each configured endpoint. An
    unconfigured postgres or Prefect API stays in the list (it is reported as not configured).
    `health_required` names checks, or kinds (`disk`, `http`): every such check is required.
    """
    from flows.maintenance.pg import Target

    checks: list[Check] = []
    url = settings.database_url.get_secret_value() if settings.database_url is not None else None
    checks.append(
        Check("postgres", "postgres", str(Target.from_url(url)) if url else "", target=_secret(url))
    )
    redis_url = settings.redis_url.get_secret_value()
    checks.append(Check("redis", "redis", _redis_target(redis_url), target=SecretStr(redis_url)))
    if prefect_api_url:
        parsed = urllib.parse.urlsplit(prefect_api_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValidationError(f"PREFECT_API_URL {display_url(prefect_api_url)!r} is not an http(s) URL")
    checks.append(
        Check(
            "prefect",
            "prefect",
            display_url(prefect_api_url) if prefect_api_url else "",
            target=_secret(prefect_api_url),
        )
    )
    for path in dict.fromkeys(Path(p).expanduser() for p in settings.disk_paths):
        checks.append(
            Check(
                f"disk:{path}",
                "disk",
                str(path),
                target=SecretStr(str(path)),
                warn_percent=settings.disk_warn_percent,
                critical_percent=settings.disk_critical_percent,
            )
        )
    names = {c.name for c in checks}
    for spec in settings.health_endpoints:
        endpoint = parse_endpoint(spec)
        if endpoint.name in names or endpoint.name in KINDS:
            raise ValidationError(f"two checks are named {endpoint.name!r}: name the endpoint (name=URL)")
        names.add(endpoint.name)
        checks.append(Check(endpoint.name, "http", display_url(endpoint.url), target=SecretStr(endpoint.url)))
    required = set(settings.health_required)
    unknown = sorted(required - names - set(KINDS))
    if unknown:
        raise ValidationError(
            f"health_required names {', '.join(repr(u[:40]) for u in unknown)}, which is no check: "
            f"use {', '.join(KINDS)} or an endpoint's name"
        )
    for check in checks:
        check.required = check.name in required or check.kind in required
    return checks


def _secret(value: str | None) -> SecretStr | None:
    return SecretStr(value) if value else None


# --- running one -------------------------------------------------------------------------------


class _Found(Exception):
    """A check's verdict other than up, raised from inside its body."""

    def __init__(self, reason: str, error: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.reason, self.error, self.details = reason, error, details or {}


def _check_postgres(check: Check, timeout: float) -> dict[str, Any]:
    import psycopg

    from flows.maintenance.pg import Target, translate

    target = Target.from_url(check.target.get_secret_value())
    try:
        # libpq's connect_timeout is whole seconds, 2 at least; run_check enforces the rest.
        conninfo = target.conninfo(connect_timeout=max(2, math.ceil(timeout)))
        with psycopg.connect(
            conninfo, autocommit=True, options=f"-c statement_timeout={max(1, int(timeout * 1000))}"
        ) as conn:
            conn.execute("SELECT 1").fetchone()
            return {"server_version": conn.info.server_version}
    except psycopg.Error as exc:
        failure = translate(exc, target)
        reason = UNREACHABLE if isinstance(failure, ConnectionFailure) else FAILED
        text = str(failure) if failure is not None else str(exc).strip().splitlines()[0]
        raise _Found(reason, text) from None


def _check_redis(check: Check, timeout: float) -> dict[str, Any]:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        check.target.get_secret_value(),
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # a retry would hide a flaky server and multiply the wait
        health_check_interval=0,
    )
    try:
        client.ping()
        return {}
    except redis.TimeoutError as exc:
        raise _Found(TIMEOUT, f"no answer from Redis at {check.shown}: {exc}") from None
    except redis.ConnectionError as exc:
        raise _Found(UNREACHABLE, f"cannot reach Redis at {check.shown}: {exc}") from None
    except redis.RedisError as exc:
        raise _Found(FAILED, f"Redis at {check.shown} answered with an error: {exc}") from None
    finally:
        client.close()


def _check_disk(check: Check, timeout: float) -> dict[str, Any]:
    path = check.target.get_secret_value()
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        raise _Found(FAILED, f"cannot read the file system of {path}: {exc.strerror or exc}") from None
    # As df counts: blocks reserved for root are neither used nor available.
    percent = 100.0 * usage.used / max(1, usage.used + usage.free)
    details = {
        "used_percent": round(percent, 2),
        "total_bytes": usage.total,
        "free_bytes": usage.free,
        "warn_percent": check.warn_percent,
        "critical_percent": check.critical_percent,
    }
    if check.critical_percent is not None and percent >= check.critical_percent:
        raise _Found(
            CRITICAL, f"{path} is {percent:.1f}% full (critical at {check.critical_percent:g}%)", details
        )
    if check.warn_percent is not None and percent >= check.warn_percent:
        raise _Found(WARN, f"{path} is {percent:.1f}% full (warning at {check.warn_percent:g}%)", details)
    return details


def _http_get(check: Check, url: str, timeout: float) -> dict[str, Any]:
    import httpx

    try:
        with (
            httpx.Client(
                timeout=timeout, follow_redirects=False, headers={"User-Agent": "opsflow-health"}
            ) as client,
            client.stream("GET", url) as response,
        ):
            code = response.status_code  # the body is not needed: the status says it
    except (httpx.TimeoutException, httpx.NetworkError) as exc:
        what = "no answer" if isinstance(exc, httpx.TimeoutException) else "cannot connect"
        reason = TIMEOUT if isinstance(exc, httpx.TimeoutException) else UNREACHABLE
        raise _Found(reason, f"{what}: {check.shown}: {exc or type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise _Found(FAILED, f"{check.shown}: {type(exc).__name__}: {exc}") from None
    if not 200 <= code < 400:
        raise _Found(FAILED, f"{check.shown} answered HTTP {code}", {"http_status": code})
    return {"http_status": code}


def _check_http(check: Check, timeout: float) -> dict[str, Any]:
    return _http_get(check, check.target.get_secret_value(), timeout)


def _check_prefect(check: Check, timeout: float) -> dict[str, Any]:
    return _http_get(check, check.target.get_secret_value().rstrip("/") + "/health", timeout)


RUNNERS: dict[str, Callable[[Check, float], dict[str, Any]]] = {
    "postgres": _check_postgres,
    "redis": _check_redis,
    "disk": _check_disk,
    "prefect": _check_prefect,
    "http": _check_http,
}

_LIBRARIES = {"postgres": "flows.maintenance.pg", "redis": "redis", "prefect": "httpx", "http": "httpx"}

_NOT_CONFIGURED = {
    "postgres": "not configured: set OPSFLOW_TARGET_DATABASE_URL (or DATABASE_URL) or give --database-url",
    "prefect": "not configured: no PREFECT_API_URL (runs use a temporary Prefect server)",
}


def _scrub(text: str, check: Check) -> str:
    text = scrub_text(" ".join(str(text).split()))
    if check.target is not None:
        parts = urllib.parse.urlsplit(check.target.get_secret_value())
        try:
            password = parts.password
        except ValueError:
            password = None
        for secret in filter(None, {password, urllib.parse.unquote(password or "")}):
            text = text.replace(secret, "***")
    return text[:500]


def run_check(check: Check, timeout: float) -> CheckResult:
    """Run `check`, waiting `timeout` seconds at most; never raises."""
    result = CheckResult(check.name, check.kind, UP, check.required, check.shown)
    if check.target is None:
        result.reason, result.error = NOT_CONFIGURED, _NOT_CONFIGURED.get(check.kind, "not configured")
        result.status = DOWN if check.required else SKIPPED
        return result
    # Imported before the clock starts: a first import is not the service's response time.
    importlib.import_module(_LIBRARIES.get(check.kind, "shutil"))
    box: dict[str, Any] = {}
    done = threading.Event()

    def body() -> None:
        try:
            box["details"] = RUNNERS[check.kind](check, timeout)
        except BaseException as exc:  # reported as the check's result, never lost
            box["exc"] = exc
        finally:
            done.set()

    started = time.perf_counter()
    threading.Thread(target=body, name=f"health-{check.name}", daemon=True).start()
    finished = done.wait(timeout)
    result.response_time_ms = round((time.perf_counter() - started) * 1000, 2)
    exc = box.get("exc")
    if not finished:
        result.status, result.reason = DOWN, TIMEOUT
        result.error = f"no answer within {timeout:g}s: {check.shown}"
    elif isinstance(exc, _Found):
        result.reason, result.error, result.details = exc.reason, _scrub(exc.error, check), exc.details
        result.status = DEGRADED if exc.reason == WARN else DOWN
    elif exc is not None:
        result.status, result.reason = DOWN, FAILED
        result.error = _scrub(f"{type(exc).__name__}: {exc}", check)
    else:
        result.details = box.get("details") or {}
    return result


def run_checks(checks: list[Check], timeout: float) -> list[CheckResult]:
    """Every check at once (for `health serve`; the flow runs them as Prefect tasks)."""
    if not checks:
        return []
    with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="health") as pool:
        return list(pool.map(lambda c: run_check(c, timeout), checks))
