"""Webhook intake (seed 000's webhook integration): signed events start batches.

    python -m flows.batch files serve --root /srv/incoming -p 'cp {input} {output}' -o /srv/out

POST /webhook with a JSON event and `X-Opsflow-Signature: sha256=<hex HMAC of the body>` made
with the shared secret (`OPSFLOW_WEBHOOK_SECRET`). Events:
- `file_uploaded` {file_path}: process that file;
- `batch_request` {inputs: [...]}: process those files/directories;
- `url_submitted` {source_url}: download it (hosts on the allow-list only) and process it.
Every path must resolve inside an allowed root. The answer is 202 with the event id; the batch
runs as a Prefect flow (a deployment run when `--deployment` is given), then its summary is
POSTed to the event's `callback_url`, with retries and a timeout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from flows.secrets import reveal

MAX_BODY = 1024 * 1024
MAX_DOWNLOAD = 100 * 1024 * 1024
CALLBACK_TIMEOUT = 10.0
EVENTS = ("file_uploaded", "batch_request", "url_submitted")


class Rejected(Exception):
    """An event that starts nothing; carries the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class IntakeConfig:
    secret: bytes
    roots: tuple[Path, ...]
    processor: str
    output: str | None
    allow_hosts: frozenset[str] = frozenset()
    deployment: str | None = None
    batch: dict[str, Any] = field(default_factory=dict)  # other process_files parameters


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def parse_event(config: IntakeConfig, body: bytes, signed: str | None) -> dict[str, Any]:
    """Check signature, shape and paths; the event's inputs as absolute paths. Pure."""
    if not signed or not hmac.compare_digest(signed.strip(), signature(config.secret, body)):
        raise Rejected(401, "missing or wrong X-Opsflow-Signature")
    try:
        event = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Rejected(400, "the body is not JSON") from None
    if not isinstance(event, dict):
        raise Rejected(400, "the event must be a JSON object")
    kind = event.get("event_type")
    if kind not in EVENTS:
        raise Rejected(400, f"event_type must be one of {', '.join(EVENTS)}")
    callback = event.get("callback_url")
    if callback is not None and (
        not isinstance(callback, str) or urllib.parse.urlsplit(callback).scheme not in ("http", "https")
    ):
        raise Rejected(400, "callback_url must be an http(s) URL")
    if kind == "file_uploaded":
        inputs = [_inside_roots(config, event.get("file_path"))]
    elif kind == "batch_request":
        raw = event.get("inputs")
        if not isinstance(raw, list) or not raw or len(raw) > 1000:
            raise Rejected(400, "batch_request needs `inputs`: a list of 1 to 1000 paths")
        inputs = [_inside_roots(config, item) for item in raw]
    else:
        url = event.get("source_url")
        host = urllib.parse.urlsplit(url).hostname if isinstance(url, str) else None
        if urllib.parse.urlsplit(url or "").scheme not in ("http", "https") or not host:
            raise Rejected(400, "url_submitted needs an http(s) `source_url`")
        if host not in config.allow_hosts:
            raise Rejected(403, f"host {host!r} is not on the allow-list")
        inputs = []
    return {"id": str(event.get("id") or uuid.uuid4()), "kind": kind, "inputs": inputs, "event": event}


def _inside_roots(config: IntakeConfig, raw: Any) -> str:
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise Rejected(400, "a path must be a non-empty string")
    path = Path(raw)
    resolved = (path if path.is_absolute() else config.roots[0] / path).resolve()
    if not any(resolved == root or root in resolved.parents for root in config.roots):
        raise Rejected(403, f"{raw!r} is outside the allowed roots")
    if not resolved.exists():
        raise Rejected(404, f"{raw!r} does not exist")
    return str(resolved)


class _AllowListRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect may not lead off the allow-list (nor off http/https)."""

    def __init__(self, hosts: frozenset[str]) -> None:
        self.hosts = hosts

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        target = urllib.parse.urlsplit(newurl)
        if target.scheme not in ("http", "https") or target.hostname not in self.hosts:
            raise Rejected(403, f"redirect to {target.hostname!r} is not on the allow-list")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(config: IntakeConfig, url: str, event_id: str) -> str:
    """Fetch an allow-listed URL into the first root's `incoming/` (size-capped, with a timeout)."""
    target_dir = config.roots[0] / "incoming"
    target_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.urlsplit(url).path).name or "download"
    target = target_dir / f"{event_id[:12]}-{name}"
    opener = urllib.request.build_opener(_AllowListRedirects(config.allow_hosts))
    with opener.open(url, timeout=30) as response:
        data = response.read(MAX_DOWNLOAD + 1)
    if len(data) > MAX_DOWNLOAD:
        raise Rejected(413, "the download is larger than 100 MiB")
    target.write_bytes(data)
    return str(target)


@task(name="callback", cache_policy=NO_CACHE, persist_result=False, retries=3, retry_delay_seconds=[1, 2, 4])
def post_callback(url: str, payload: dict[str, Any]) -> int:
    """POST the result to the event's callback_url; Prefect retries it."""
    import httpx

    try:
        response = httpx.post(url, json=payload, timeout=CALLBACK_TIMEOUT)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        # httpx's message quotes the URL, token included, and it would become the task run's
        # state message in the Prefect API: say what failed without it.
        status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else type(exc).__name__
        raise RuntimeError(f"callback to {urllib.parse.urlsplit(url).hostname} failed: {status}") from None
    return response.status_code


@flow(name="webhook-event", flow_run_name="webhook-{event_id}", persist_result=False)
def handle_event(
    event_id: str,
    kind: str,
    inputs: list[str],
    source_url: SecretStr | None,
    callback_url: SecretStr | None,
    config: dict[str, Any],
) -> dict[str, Any]:
    """One accepted event: (download,) run the batch, then tell the callback URL.

    The URLs are SecretStr (stored obscured in the flow run's parameters): a callback or a
    presigned download URL often carries a token."""
    from flows.masking import Masker, environment_secrets, masking

    urls = [str(reveal(u)) for u in (source_url, callback_url) if u is not None]
    with masking(Masker([*urls, *environment_secrets()])):
        return _handle(event_id, kind, inputs, reveal(source_url), reveal(callback_url), config)


def _handle(
    event_id: str,
    kind: str,
    inputs: list[str],
    source_url: str | None,
    callback_url: str | None,
    config: dict[str, Any],
) -> dict[str, Any]:
    from flows.files.flow import process_files
    from flows.masking import mask

    logger = get_run_logger()
    intake = IntakeConfig(
        secret=b"",
        roots=tuple(Path(r) for r in config["roots"]),
        processor=config["processor"],
        output=config["output"],
        allow_hosts=frozenset(config["allow_hosts"]),
    )
    status, result = "completed", None
    try:
        if kind == "url_submitted" and source_url:
            inputs = [download(intake, source_url, event_id)]
        parameters = {
            "inputs": inputs,
            "processor": intake.processor,
            "output": intake.output,
            "name": f"webhook-{kind}",
            **config.get("batch", {}),
        }
        if config.get("deployment"):
            from prefect.deployments import run_deployment

            run = run_deployment(config["deployment"], parameters=parameters, timeout=3600)
            result = run.state.result(raise_on_failure=False) if run.state else None
            status = "completed" if run.state and run.state.is_completed() else "failed"
        else:
            state = process_files(**parameters, return_state=True)
            result = state.result(raise_on_failure=False)
            status = "completed" if state.is_completed() else "failed"
    except Exception as exc:  # the callback must hear about it either way
        status, result = "failed", {"error": mask(str(exc))}
    payload = {
        "id": event_id,
        "status": status,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "result": result if isinstance(result, dict) else {"error": str(result)},
    }
    if callback_url:
        state = post_callback(callback_url, payload, return_state=True)
        if not state.is_completed():
            logger.warning(f"callback to {urllib.parse.urlsplit(callback_url).hostname} failed after retries")
    return payload


def _secret(url: Any) -> SecretStr | None:
    return SecretStr(url) if isinstance(url, str) else None


def make_server(config: IntakeConfig, host: str, port: int) -> ThreadingHTTPServer:
    """A threaded HTTP server whose POST /webhook checks the event and starts its batch."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            try:
                if self.path.rstrip("/") != "/webhook":
                    raise Rejected(404, "POST events to /webhook")
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._discard(length)  # so the client reads the answer instead of a broken pipe
                    raise Rejected(413, f"the body is larger than {MAX_BODY // 1024} KiB")
                accepted = parse_event(
                    config, self.rfile.read(length), self.headers.get("X-Opsflow-Signature")
                )
            except Rejected as exc:
                self._answer(exc.status, {"accepted": False, "error": str(exc)})
                return
            except ValueError:
                self._answer(400, {"accepted": False, "error": "bad Content-Length"})
                return
            event = accepted["event"]
            kwargs = {
                "event_id": accepted["id"],
                "kind": accepted["kind"],
                "inputs": accepted["inputs"],
                "source_url": _secret(event.get("source_url")),
                "callback_url": _secret(event.get("callback_url")),
                "config": {
                    "roots": [str(r) for r in config.roots],
                    "processor": config.processor,
                    "output": config.output,
                    "allow_hosts": sorted(config.allow_hosts),
                    "deployment": config.deployment,
                    "batch": config.batch,
                },
            }
            threading.Thread(target=handle_event, kwargs=kwargs, daemon=True).start()
            self._answer(202, {"accepted": True, "id": accepted["id"]})

        def _discard(self, length: int) -> None:
            left = min(length, 16 * MAX_BODY)
            while left > 0 and (chunk := self.rfile.read(min(left, 65536))):
                left -= len(chunk)
            if length > 16 * MAX_BODY:
                self.close_connection = True

        def _answer(self, status: int, data: dict[str, Any]) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            from flows.console import Console

            Console("webhook").info(fmt % args)

    return ThreadingHTTPServer((host, port), Handler)
