"""The instances and router of a release target as background processes, and their health.

Each process runs `python -m flows.release.service ...` in its own session (it outlives the
flow run that started it: the live color must keep serving), logs to ROOT/run/<name>.log and
leaves its pid in ROOT/run/<name>.pid. A pid is trusted only while /proc shows it is still our
service, so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from flows.errors import DependencyError

PROJECT = Path(__file__).resolve().parents[2]
START_SECONDS = 15.0


def _pid_file(root: Path, name: str) -> Path:
    return root / "run" / f"{name}.pid"


def running_pid(root: Path, name: str) -> int | None:
    """The pid of our `name` process (blue, green, router) when it is alive."""
    try:
        pid = int(_pid_file(root, name).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"flows.release.service" in cmdline and str(root).encode() in b" ".join(cmdline) else None


def stop(root: Path, name: str, grace: float = 5.0) -> bool:
    """Stop `name` (SIGTERM, then SIGKILL after `grace` s); True when one was running."""
    pid = running_pid(root, name)
    _pid_file(root, name).unlink(missing_ok=True)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    """Whether `pid` still runs; an exited child of this process is reaped, not waited for."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start(root: Path, name: str, args: list[str], health_url: str) -> int:
    """(Re)start `name` and wait until `health_url` answers at all (any HTTP status)."""
    stop(root, name)
    (root / "run").mkdir(parents=True, exist_ok=True)
    log = root / "run" / f"{name}.log"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))
    )
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.release.service", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=root,
        )
    _pid_file(root, name).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise DependencyError(f"{name} exited with {proc.returncode} at start: {tail[0]} (log: {log})")
        if probe(health_url, timeout=1.0)[0] is not None:
            return proc.pid
        time.sleep(0.1)
    stop(root, name)
    raise DependencyError(f"{name} did not answer at {health_url} within {START_SECONDS:g}s (log: {log})")


def probe(url: str, timeout: float = 3.0) -> tuple[int | None, dict]:
    """(HTTP status, JSON body) of a GET; (None, {"error": ...}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        return None, {"error": str(getattr(exc, "reason", exc))}
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {"body": body[:200].decode(errors="replace")}
    return status, doc if isinstance(doc, dict) else {"body": doc}


def start_instance(root: Path, color: str, port: int) -> int:
    return start(
        root,
        color,
        ["instance", "--root", str(root), "--color", color, "--port", str(port)],
        health_url(port),
    )


def ensure_router(root: Path, port: int, ports: dict[str, int]) -> bool:
    """Start the router unless it already runs with these ports; True when (re)started."""
    config = root / "run" / "router.json"
    wanted = {"port": port, **ports}
    if running_pid(root, "router") and config.is_file() and json.loads(config.read_text()) == wanted:
        return False
    args = ["router", "--root", str(root), "--port", str(port)]
    args += ["--blue-port", str(ports["blue"]), "--green-port", str(ports["green"])]
    start(root, "router", args, health_url(port))
    config.write_text(json.dumps(wanted))
    return True


def health_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/health"
