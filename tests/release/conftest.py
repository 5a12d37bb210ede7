"""Release targets for tests: a directory, free ports, and every process stopped afterwards."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from flows.release import instances


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def target_root(tmp_path):
    root = tmp_path / "target"
    yield root
    for name in ("router", "blue", "green"):
        instances.stop(root, name)


@pytest.fixture
def ports():
    blue, green, router = free_ports(3)
    return {"blue_port": blue, "green_port": green, "router_port": router}


@pytest.fixture
def app(tmp_path) -> Path:
    """A release's files: a page the instances serve."""
    src = tmp_path / "app"
    src.mkdir()
    (src / "index.html").write_text("<h1>sample</h1>\n")
    return src
