"""Webhook intake (seed 000's webhook integration): signed events start batches.

    python -m flows.batch files serve --root /srv/incoming -p 'cp {input} {output}' -o /srv/out

POST /webhook with a JSON event and `X-Opsflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>">` made with the shared secret (`OPSFLOW_WEBHOOK_SECRET`; see webhook_signature.py).
Events:
- `file_uploaded` {file_path}: process that file;
- `batch_request` {inputs: [...]}: process those files/directories;
- `url_submitted` {source_url}: download it (hosts, addresses and ports on the allow-list only,
  redirects checked hop by hop, see webhook_callback.py) into `incoming/` and process it.
Every path must resolve inside an allowed root, and the batch walks directories under the same
roots, so a link out of a root is refused at any depth. An event id is accepted once (replays
get 409, see flows/records/webhooks.py). The answer is 202 with the event id; the batch runs as a
Prefect flow (a deployment run when `--deployment` is given), then its summary is POSTed to the
event's `callback_url`, which must be on the callback allow-list (webhook_callback.py).
The HTTP limits (sizes, timeouts, connections) are in webhook_http.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from flows.files.webhook_callback import (
    DOWNLOAD,
    CallbackHosts,
    check_callback,
    check_url,
    fetch_checked,
    post_checked,
)
from flows.files.webhook_http import HttpLimits, LimitedServer, Rejected, read_body
from flows.files.webhook_signature import (
    DEFAULT_TOLERANCE,
    HEADER,
    SignatureRefused,
    parse_header,
    sign,
    verify,
)
from flows.secrets import reveal

__all__ = ["IntakeConfig", "Rejected", "download", "handle_event", "make_server", "parse_event", "signature"]

MAX_DOWNLOAD = 100 * 1024 * 1024
DOWNLOAD_TIMEOUT = 30.0
CALLBACK_TIMEOUT = 10.0
#: Bytes of a file name kept free for what the batch adds to an input's name (`.opsflow-<hex>-`
#: temporaries, `.errors.jsonl` reports, a template's `{output}.gz`).
NAME_ROOM = 40
EVENTS = ("file_uploaded", "batch_request", "url_submitted")
#: What an event id may be: it names the download file and the flow run, so no separators, no
#: leading dot, nothing a shell or a path would read specially.
EVENT_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
#: How long accepted event ids are remembered (at least twice the tolerance window, the longest a
#: signed request can stay acceptable); a sender's retry of an event within it gets 409.
REMEMBER_EVENTS = timedelta(days=1)


@dataclass(frozen=True)
class IntakeConfig:
    secret: bytes
    roots: tuple[Path, ...]
    processor: str
    output: str | None
    allow_hosts: frozenset[str] = frozenset()  # names, addresses, networks, with :port (webhook_callback.py)
    deployment: str | None = None
    batch: dict[str, Any] = field(default_factory=dict)  # other process_files parameters
    previous_secrets: tuple[bytes, ...] = ()  # still accepted while senders rotate to `secret`
    callback_hosts: frozenset[str] = frozenset()  # names, addresses, networks (webhook_callback.py)
    tolerance: float = DEFAULT_TOLERANCE  # seconds a signature's timestamp may differ from now
    limits: HttpLimits = HttpLimits()

    @property
    def secrets(self) -> tuple[bytes, ...]:
        return (self.secret, *self.previous_secrets)


def signature(secret: bytes, body: bytes, timestamp: float | None = None) -> str:
    """The `X-Opsflow-Signature` value a sender puts on `body` (timestamp: now)."""
    return sign(secret, body, timestamp)


def parse_event(
    config: IntakeConfig, body: bytes, signed: str | None, now: float | None = None
) -> dict[str, Any]:
    """Check signature, shape, id, paths and callback; the event's inputs as absolute paths.

    No side effect but DNS lookups of the callback host."""
    try:
        header = parse_header(signed, tolerance=config.tolerance, now=now)
        verify(header, config.secrets, body)
    except SignatureRefused as exc:
        raise Rejected(401, str(exc)) from None
    try:
        event = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Rejected(400, "the body is not JSON") from None
    if not isinstance(event, dict):
        raise Rejected(400, "the event must be a JSON object")
    kind = event.get("event_type")
    if kind not in EVENTS:
        raise Rejected(400, f"event_type must be one of {', '.join(EVENTS)}")
    raw_id = event.get("id")
    if raw_id is None:
        # No id to remember: the signed message itself is, so the same request cannot run twice.
        event_id = uuid.uuid4().hex
        replay_key = "body:" + hashlib.sha256(f"{header.timestamp}.".encode() + body).hexdigest()
    elif isinstance(raw_id, str) and EVENT_ID.fullmatch(raw_id):
        event_id, replay_key = raw_id, "id:" + raw_id
    else:
        raise Rejected(400, "id must be 1 to 128 of A-Z a-z 0-9 . _ - and not start with a dot")
    callback = event.get("callback_url")
    if callback is not None:
        check_callback(callback, CallbackHosts.parse(config.callback_hosts))
    if kind == "file_uploaded":
        inputs = [_inside_roots(config, event.get("file_path"))]
    elif kind == "batch_request":
        raw = event.get("inputs")
        if not isinstance(raw, list) or not raw or len(raw) > 1000:
            raise Rejected(400, "batch_request needs `inputs`: a list of 1 to 1000 paths")
        inputs = [_inside_roots(config, item) for item in raw]
    else:
        url = event.get("source_url")
        if not isinstance(url, str) or not url:
            raise Rejected(400, "url_submitted needs an http(s) `source_url`")
        check_url(url, CallbackHosts.parse(config.allow_hosts), DOWNLOAD)
        download_name(url, event_id, _name_max(config.roots[0]))
        inputs = []
    return {"id": event_id, "replay_key": replay_key, "kind": kind, "inputs": inputs, "event": event}


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 80 else raw[:60] + "...")


def _inside_roots(config: IntakeConfig, raw: Any) -> str:
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise Rejected(400, "a path must be a non-empty string")
    path = Path(raw)
    try:
        resolved = (path if path.is_absolute() else config.roots[0] / path).resolve()
        if not any(resolved == root or root in resolved.parents for root in config.roots):
            raise Rejected(403, f"{_shown(raw)} is outside the allowed roots")
        if not resolved.exists():
            raise Rejected(404, f"{_shown(raw)} does not exist")
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise Rejected(
                400, f"{_shown(raw)}: a name in it, or the whole path, is longer than the file system allows"
            ) from None
        raise Rejected(400, f"{_shown(raw)}: {exc.strerror or exc}") from None
    return str(resolved)


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of `folder` takes."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def download_name(url: str, event_id: str, name_max: int = 255) -> str:
    """`<event id>-<the URL's file name>`: a plain name that fits the file system with room for
    what the batch adds to it (the URL's part is shortened); Rejected(400) if the id cannot fit."""
    room = name_max - NAME_ROOM - len(event_id) - 1
    if room < 8:
        raise Rejected(400, f"the event id is too long for file names here ({name_max} bytes at most)")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urllib.parse.urlsplit(url).path).name).lstrip(".")
    return f"{event_id}-{name[: min(100, room)] or 'download'}"


def _open_incoming(root: Path) -> int:
    """`incoming/` under `root` (made if missing) as a directory descriptor; a link there, to
    anywhere, is refused (403)."""
    folder = root / "incoming"
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir("incoming", dir_fd=top)
        return os.open("incoming", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Rejected(403, f"{folder} must be a directory inside {root}, not a link") from None
        raise Rejected(403, f"cannot use {folder}: {exc.strerror}") from None
    finally:
        os.close(top)


def download(config: IntakeConfig, url: str, event_id: str) -> str:
    """Fetch an allow-listed URL into the first root's `incoming/` (size-capped, with a timeout).

    Every address, port and redirect is checked (webhook_callback.py). `incoming/` is opened
    once without following links, and the file is created in that very directory under a new
    temporary name (O_CREAT|O_EXCL|O_NOFOLLOW) and renamed into place there, so neither the event
    id, the URL's file name, nor a link planted at or in `incoming/`, before or during the
    download, can make it land anywhere else."""
    if not EVENT_ID.fullmatch(event_id):
        raise Rejected(400, "the event id is not a safe file name")
    allowed = CallbackHosts.parse(config.allow_hosts)
    check_url(url, allowed, DOWNLOAD)  # before anything is made; every hop is checked again
    root = config.roots[0].resolve()
    folder = _open_incoming(root)
    try:
        name = download_name(url, event_id, _name_max(root))
        temporary = f".opsflow-download-{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        handle = os.open(temporary, flags, 0o600, dir_fd=folder)
        try:
            with open(handle, "wb") as out:
                size = 0

                def write(chunk: bytes) -> None:
                    nonlocal size
                    size += len(chunk)
                    if size > MAX_DOWNLOAD:
                        raise Rejected(413, "the download is larger than 100 MiB")
                    out.write(chunk)

                fetch_checked(url, allowed, DOWNLOAD_TIMEOUT, write)
            # replaces a link at the final name itself, never its destination
            os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise
        return str(_where(folder, root) / name)
    finally:
        os.close(folder)


def _where(folder: int, root: Path) -> Path:
    """Where the directory descriptor `folder` is now (it may have been moved): inside `root`."""
    try:
        now = Path(os.readlink(f"/proc/self/fd/{folder}"))
    except OSError:
        return root / "incoming"
    if not (now == root or root in now.parents):
        raise Rejected(403, f"{root / 'incoming'} was moved out of {root} during the download")
    return now


@task(name="callback", cache_policy=NO_CACHE, persist_result=False, retries=3, retry_delay_seconds=[1, 2, 4])
def post_callback(url: str, payload: dict[str, Any], callback_hosts: list[str]) -> int:
    """POST the result to the event's callback_url (checked again, see webhook_callback.py);
    Prefect retries it."""
    return post_checked(url, payload, CallbackHosts.parse(callback_hosts), CALLBACK_TIMEOUT)


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
            # The batch walks directories under the same roots as `files run --root`: a link
            # anywhere below a named folder that leads out of them fails the batch.
            "roots": [str(r) for r in intake.roots],
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
        state = post_callback(callback_url, payload, config.get("callback_hosts", []), return_state=True)
        if not state.is_completed():
            logger.warning(f"callback to {urllib.parse.urlsplit(callback_url).hostname} failed after retries")
    return payload


def _secret(url: Any) -> SecretStr | None:
    return SecretStr(url) if isinstance(url, str) else None


def _first_delivery(key: str, tolerance: float) -> bool:
    from flows.errors import OpsflowError
    from flows.records.db import session
    from flows.records.webhooks import remember_event

    try:
        with session() as db:
            return remember_event(db, key, keep=max(REMEMBER_EVENTS, timedelta(seconds=2 * tolerance)))
    except OpsflowError:
        # Without the records there is no replay check: refuse rather than maybe run twice.
        raise Rejected(503, "the records database is unreachable; try again later") from None


def _run_arguments(config: IntakeConfig, accepted: dict[str, Any]) -> dict[str, Any]:
    event = accepted["event"]
    return {
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
            "callback_hosts": sorted(config.callback_hosts),
            "deployment": config.deployment,
            "batch": config.batch,
        },
    }


def make_app(config: IntakeConfig) -> Any:
    """The ASGI app: POST /webhook checks the event in order of cost and starts its batch."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from flows.console import Console

    console = Console("webhook")

    async def receive_event(request: Request) -> JSONResponse:
        now = time.time()
        try:
            try:  # the signature's form and age first: an unsigned or stale request costs no body
                parse_header(request.headers.get(HEADER), tolerance=config.tolerance, now=now)
            except SignatureRefused as exc:
                raise Rejected(401, str(exc)) from None
            body = await read_body(request, config.limits)
            try:
                accepted = await run_in_threadpool(
                    parse_event, config, body, request.headers.get(HEADER), now
                )
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                raise Rejected(400, "a name in the event is longer than the file system allows") from None
            if not await run_in_threadpool(_first_delivery, accepted["replay_key"], config.tolerance):
                raise Rejected(409, f"event {accepted['id']!r} was already received")
        except Rejected as exc:
            console.warning(f"POST /webhook from {_client(request)}: {exc.status} {exc}")
            # Closed after a refusal: whatever the client still sends is never read.
            return JSONResponse(
                {"accepted": False, "error": str(exc)},
                status_code=exc.status,
                headers={"Connection": "close"},
            )
        threading.Thread(
            target=handle_event,
            kwargs=_run_arguments(config, accepted),
            name=f"webhook-{accepted['id']}",
            daemon=True,
        ).start()
        console.info(f"POST /webhook from {_client(request)}: 202 {accepted['kind']} {accepted['id']}")
        return JSONResponse({"accepted": True, "id": accepted["id"]}, status_code=202)

    async def elsewhere(request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", 404)
        return JSONResponse(
            {"accepted": False, "error": "POST events to /webhook"},
            status_code=status,
            headers={"Connection": "close"},
        )

    return Starlette(
        routes=[Route("/webhook", receive_event, methods=["POST"])],
        exception_handlers={404: elsewhere, 405: elsewhere},
    )


def _client(request: Any) -> str:
    return request.client.host if request.client else "?"


def make_server(config: IntakeConfig, host: str, port: int) -> LimitedServer:
    """The intake on `host:port` (bound now; port 0 picks one): `serve_forever()` in any thread,
    `shutdown()` from another, `server_close()` at the end."""
    return LimitedServer(make_app(config), host, port, config.limits)
