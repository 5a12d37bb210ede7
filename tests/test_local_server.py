"""The fast path: which Prefect API a local run uses, and the background server it starts."""

from __future__ import annotations

import socket

import pytest

from flows.errors import ValidationError
from flows.local_server import configured_api_url, ensure_api, healthy, local_api_url, stop_server


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / "opsflow-home"))
    return tmp_path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_api_url_from_environment_or_active_profile(clean_env, monkeypatch):
    assert configured_api_url() is None
    home = clean_env / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://prefect.internal:4200/api"\n'
    )
    assert configured_api_url() == "http://prefect.internal:4200/api"
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere/api")
    assert configured_api_url() == "http://elsewhere/api"


def test_modes_without_a_server(clean_env):
    port = _free_port()
    assert ensure_api("ephemeral", port, print) is None
    assert ensure_api("reuse", port, print) is None  # nothing answers: Prefect's temporary server
    with pytest.raises(ValidationError, match="auto, reuse or ephemeral"):
        ensure_api("sometimes", port, print)


@pytest.mark.slow
def test_auto_starts_a_server_once_and_reuses_it(clean_env, monkeypatch):
    port = _free_port()
    said: list[str] = []
    try:
        url = ensure_api("auto", port, said.append)
        assert url == local_api_url(port) and healthy(url)
        assert any("starting a local Prefect server" in line for line in said)
        monkeypatch.delenv("PREFECT_API_URL")
        said.clear()
        assert ensure_api("auto", port, said.append) == url
        assert said == []  # reused, not started again
    finally:
        message = stop_server()
    assert "stopped" in message
    assert not healthy(local_api_url(port), timeout=1)
