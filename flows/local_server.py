"""The fast path for local runs: reuse (or start once) a local Prefect server.

Without a configured API, every Prefect process starts and stops a temporary server of
its own (~9 s a run here). A server that keeps running costs that once; later runs connect
in well under a second and the UI at http://127.0.0.1:4200 shows every run. Modes
(`OPSFLOW_SERVER`):

- `auto` (default): use PREFECT_API_URL when configured; else a server answering on
  127.0.0.1:OPSFLOW_SERVER_PORT; else start one in the background (logged, pid file under
  ~/.opsflow) and use it. `opsflow server stop` stops it.
- `reuse`: like auto, but never start one: fall back to Prefect's temporary server.
- `ephemeral`: always Prefect's own temporary server.
Both servers keep their data in Prefect's home (SQLite), so history is the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from flows.errors import ConnectionFailure, ValidationError

STARTUP_SECONDS = 90.0


def opsflow_home() -> Path:
    return Path(os.environ.get("OPSFLOW_HOME", Path.home() / ".opsflow"))


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile, without importing Prefect."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml"))
    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "ephemeral")
    value = data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(value) if value else None


def healthy(api_url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def local_api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def ensure_api(mode: str, port: int, log: callable) -> str | None:  # type: ignore[valid-type]
    """Point this process at a Prefect API per `mode`; returns the URL used (None: temporary server)."""
    if mode not in ("auto", "reuse", "ephemeral"):
        raise ValidationError(f"OPSFLOW_SERVER must be auto, reuse or ephemeral, not {mode!r}")
    if mode == "ephemeral":
        return None
    configured = configured_api_url()
    if configured:
        return configured
    url = local_api_url(port)
    if not healthy(url):
        if mode == "reuse":
            return None
        start_server(port, log)
    os.environ["PREFECT_API_URL"] = url
    return url


def start_server(port: int, log: callable) -> None:  # type: ignore[valid-type]
    home = opsflow_home()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    log(f"starting a local Prefect server on 127.0.0.1:{port} for this and later runs (log: {log_path})")
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="true")
    env.pop("PREFECT_API_URL", None)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command; stopped by `opsflow server stop`
            env=env,
        )
    (home / "server.pid").write_text(f"{proc.pid}\n{port}\n")
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if healthy(local_api_url(port)):
            log(f"Prefect server ready: UI at http://127.0.0.1:{port}")
            return
        if proc.poll() is not None:
            raise ConnectionFailure(
                f"the local Prefect server exited with code {proc.returncode}; see {log_path}"
            )
        time.sleep(0.25)
    raise ConnectionFailure(
        f"the local Prefect server did not answer within {STARTUP_SECONDS:.0f}s; see {log_path}"
    )


def stop_server() -> str:
    """Stop the server `start_server` started; says what it did."""
    pid_file = opsflow_home() / "server.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return "no local server was started by opsflow"
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(40):
            time.sleep(0.25)
            os.killpg(pid, 0)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        return f"not allowed to stop process group {pid}"
    pid_file.unlink(missing_ok=True)
    return f"stopped the local Prefect server (pid {pid})"
