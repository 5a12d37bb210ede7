"""Fixtures for health tests: the real services, HTTP endpoints on 127.0.0.1, a port nobody uses.

`endpoints` serves /ok (200), /moved (302), /fail (500), /hang (answers only after the
test ends, so a check of it must give up on its own) and /meet (200 once `meeting`'s number of
requests are waiting together, 500 if they do not come within 30 s); `silent_port` accepts connections and
never says a word (a PostgreSQL or Redis that hangs); `closed_port` refuses them.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.maintenance.conftest import pg_admin_url, redis_url  # noqa: F401

PASSWORD = "hunter2-s3cret"
TIMEOUT = 10.0  # generous: a service that is up must not look down on a busy machine


class Endpoints:
    def __init__(self) -> None:
        release = self.release = threading.Event()
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/hang"):
                    release.wait(30)
                code = {"/ok": 200, "/moved": 302, "/fail": 500}.get(self.path.split("?")[0], 200)
                if self.path.startswith("/meet"):
                    try:  # 200 only once all the expected requests are in at the same time
                        endpoints.meeting.wait(30)
                    except threading.BrokenBarrierError:
                        code = 500
                self.send_response(code)
                if code == 302:
                    self.send_header("Location", "/ok")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.meeting = threading.Barrier(1)  # `/meet`: set to as many requests as must meet
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints() -> Iterator[Endpoints]:
    receiver = Endpoints()
    try:
        yield receiver
    finally:
        receiver.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A port where nothing listens: connections are refused."""
    return free_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that completes the TCP handshake (the backlog) and then never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def with_password(url: str) -> str:
    """`url` with PASSWORD in it (the test servers trust local connections and ignore it)."""
    scheme, rest = url.split("://", 1)
    if "@" in rest:
        user, host = rest.split("@", 1)
        return f"{scheme}://{user.split(':')[0]}:{PASSWORD}@{host}"
    user = "postgres" if scheme.startswith("postgres") else ""
    return f"{scheme}://{user}:{PASSWORD}@{rest}"


@pytest.fixture
def base_env(monkeypatch) -> dict[str, str]:
    """Health settings needing no service: required postgres and redis, a 1 s timeout,
    thresholds that a real disk does not reach, no endpoints; nothing from the environment."""
    values = {
        "OPSFLOW_HEALTH_REQUIRED": json.dumps(["postgres", "redis"]),
        "OPSFLOW_CHECK_TIMEOUT_SECONDS": str(TIMEOUT),
        "OPSFLOW_DISK_PATHS": json.dumps(["/"]),
        "OPSFLOW_DISK_WARN_PERCENT": "99.99",
        "OPSFLOW_DISK_CRITICAL_PERCENT": "100",
        "OPSFLOW_HEALTH_ENDPOINTS": "[]",
    }
    for name in (
        "DATABASE_URL",
        "REDIS_URL",
        "OPSFLOW_DATABASE_URL",
        "OPSFLOW_TARGET_DATABASE_URL",
        "OPSFLOW_REDIS_URL",
        "OPSFLOW_ENVIRONMENT",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def health_env(monkeypatch, base_env, pg_admin_url, redis_url) -> dict[str, str]:  # noqa: F811
    """`base_env` plus the real PostgreSQL and Redis, with PASSWORD in their URLs."""
    values = {
        "OPSFLOW_TARGET_DATABASE_URL": with_password(pg_admin_url),
        "OPSFLOW_REDIS_URL": with_password(redis_url),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return base_env | values
