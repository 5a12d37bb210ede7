"""`python -m flows.batch health ...` in subprocesses: exit codes, output, bad input, history."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from flows.batch import main
from tests.conftest import ROOT
from tests.maintenance.conftest import opsflow

from .conftest import PASSWORD


def env_with(**values: str) -> dict[str, str]:
    return dict(os.environ) | values


def start_opsflow(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.batch", "health", *args],
        cwd=ROOT,
        env=env or dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(
    ("args", "extra_env", "says"),
    [
        (["check", "--endpoint", "ftp://example.org/"], {}, "not an http:// or https:// URL"),
        (["check", "--endpoint", f"http://u:{PASSWORD}@h/"], {}, "carries a password"),
        (["check", "--endpoint", f"api=http://h/?token={PASSWORD}"], {}, "carries a password"),
        (["check", "--endpoint", "http://h/\nX-Evil: 1"], {}, "control characters"),
        (["check", "--endpoint", "$(id)=http://h/"], {}, "endpoint name"),
        (["check", "--redis-url", f"http://:{PASSWORD}@h:1/"], {}, "redis://"),
        (["check", "--database-url", "mysql://x/y"], {}, "postgresql://"),
        (["check"], {"OPSFLOW_HEALTH_REQUIRED": '["nope"]'}, "'nope', which is no check"),
        (["check"], {"OPSFLOW_CHECK_TIMEOUT_SECONDS": "0"}, "OPSFLOW_CHECK_TIMEOUT_SECONDS"),
        (["check"], {"OPSFLOW_HEALTH_ENDPOINTS": '["gopher://x/"]'}, "not an http:// or https:// URL"),
        (["serve", "--port", "0"], {}, "--port"),
        (["serve", "--port", "70000"], {}, "--port"),
        (["serve", "--port", "http"], {}, "--port"),
        (["serve", "--host", "127.0.0.1; rm -rf /"], {}, "--host"),
        (["serve", "--host", "256.256.256.256"], {}, "not an address of this machine"),
        (["serve", "--cache-seconds", "-1"], {}, "--cache-seconds"),
        (["history", "--limit", "0"], {}, "--limit"),
        (["history", "--check", "redis\n; DROP TABLE x"], {}, "--check"),
    ],
)
def test_bad_input_exits_3_before_anything_runs(base_env, monkeypatch, capsys, args, extra_env, says):
    # In this process for speed (the command line's own entry point, no subprocess).
    for name, value in extra_env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        main(["health", *args])
    out, err = capsys.readouterr()
    assert exited.value.code == 3, err
    assert says in err and PASSWORD not in out + err and "Traceback" not in err


def test_bad_input_on_the_real_command_line(base_env):
    done = opsflow("health", "check", "--endpoint", f"http://u:{PASSWORD}@h/")
    assert done.returncode == 3 and "carries a password" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and PASSWORD not in done.stdout + done.stderr
    assert "Beginning flow run" not in done.stderr


def test_a_port_in_use_exits_4(base_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        done = opsflow("health", "serve", "--port", str(taken.getsockname()[1]))
    assert done.returncode == 4 and "cannot listen on 127.0.0.1" in done.stderr


@pytest.mark.services
@pytest.mark.usefixtures("prefect_api")
def test_check_exit_codes_output_and_history(health_env, endpoints, closed_port):
    # Four runs at once: each is its own process and flow run.
    runs = {
        "healthy": start_opsflow("check", "--json", "--endpoint", f"api={endpoints.url('/ok')}"),
        "degraded": start_opsflow("check", "--endpoint", f"api={endpoints.url('/fail')}"),
        "down": start_opsflow(
            "check", env=env_with(OPSFLOW_REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0")
        ),
        "critical": start_opsflow("check", "--json", env=env_with(OPSFLOW_DISK_CRITICAL_PERCENT="0.001")),
    }
    healthy, degraded, down, critical = (finished(p) for p in runs.values())

    assert healthy.returncode == 0, healthy.stderr
    document = json.loads(healthy.stdout)
    assert document["status"] == "healthy" and document["components"]["api"]["status"] == "up"

    assert degraded.returncode == 0, degraded.stderr
    assert (
        "overall: degraded" in degraded.stdout and "[WARNING] [health-check] degraded: api" in degraded.stderr
    )
    assert degraded.stdout.splitlines()[0].split() == ["CHECK", "STATUS", "REQUIRED", "TIME", "DETAIL"]

    assert down.returncode == 4, down.stderr
    assert "overall: unhealthy" in down.stdout and "[ERROR] [health-check] unhealthy: redis" in down.stderr
    assert PASSWORD not in healthy.stdout + healthy.stderr + down.stdout + down.stderr

    assert critical.returncode == 1 and json.loads(critical.stdout)["status"] == "unhealthy"

    history = opsflow("health", "history", "--check", "redis", "--limit", "4", "--json")
    assert history.returncode == 0, history.stderr
    entries = json.loads(history.stdout)
    assert sorted(e["overall_status"] for e in entries) == ["degraded", "healthy", "unhealthy", "unhealthy"]
    refused = [e for e in entries if e["status"] == "down"]
    assert len(refused) == 1 and refused[0]["details"]["reason"] == "unreachable"
    assert PASSWORD not in history.stdout
    table = opsflow("health", "history", "--check", "api", "--limit", "2")
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("CHECKED AT (UTC)")
    assert len(table.stdout.splitlines()) == 3 and "answered HTTP 500" in table.stdout
