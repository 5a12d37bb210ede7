"""`health serve` in subprocesses: /health 200 and 503, /metrics in Prometheus text, 404."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.maintenance.record import recorded
from tests.conftest import ROOT

from .conftest import PASSWORD, TIMEOUT, free_port

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api")]


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


class Server:
    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.batch", "health", "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, seconds: float = 120) -> None:  # a cold start on a busy machine is slow
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"health serve exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                get(self.url + "/nothing-here")
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("health serve did not start listening")

    def stop(self) -> str:
        """Stop the server (once); its stderr."""
        if self.proc.returncode is not None:
            return ""
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture
def servers(health_env, closed_port) -> Iterator[tuple[Server, Server]]:
    """A server whose services are all up, and one whose (required) Redis refuses connections."""
    env = dict(os.environ)
    started = [Server(env, "--cache-seconds", "30")]
    started.append(
        Server(
            env | {"OPSFLOW_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0"},
            "--cache-seconds",
            "0",
        )
    )
    try:
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


def test_health_metrics_and_not_found(servers):
    before = time.time()
    with recorded("opsflow-test-ok", {"database_url": f"postgresql://u:{PASSWORD}@h/db"}, "test"):
        pass
    try:
        with recorded("opsflow-test-bad", {}, "test") as outcome:
            outcome.fail("it broke", 1)
            raise RuntimeError("it broke")
    except RuntimeError:
        pass
    after = time.time()
    good, bad = servers
    good.wait_ready()
    bad.wait_ready()

    code, kind, body = get(good.url + "/health")
    assert (code, kind) == (200, "application/json"), body
    document = json.loads(body)
    assert document["status"] == "healthy" and document["components"]["redis"]["status"] == "up"
    assert json.loads(get(good.url + "/health?again=1")[2])["timestamp"] == document["timestamp"]  # cached

    code, _, body = get(bad.url + "/health")
    assert code == 503
    document = json.loads(body)
    assert document["status"] == "unhealthy" and document["exit_code"] == 4
    assert document["components"]["redis"]["reason"] == "unreachable"

    code, kind, text = get(good.url + "/metrics")
    assert code == 200 and kind.startswith("text/plain; version=")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("script_execution_status", (("script", "opsflow-test-ok"),))] == 1
    assert samples[("script_execution_status", (("script", "opsflow-test-bad"),))] == 0
    # What was recorded, within what the test saw of it.
    assert (
        0
        <= samples[("script_execution_duration_seconds", (("script", "opsflow-test-ok"),))]
        <= after - before
    )
    assert int(before) <= samples[("script_last_run_timestamp", (("script", "opsflow-test-bad"),))] <= after
    assert samples[("opsflow_health_status", ())] == 1
    assert samples[("opsflow_records_up", ())] == 1
    up = ("opsflow_health_check_up", (("check", "redis"), ("kind", "redis"), ("required", "true")))
    assert samples[up] == 1
    assert (
        0
        < samples[("opsflow_health_check_response_seconds", (("check", "postgres"), ("kind", "postgres")))]
        < TIMEOUT  # an answer, within the check's timeout
    )

    bad_samples = {
        (s.name, s.labels.get("check")): s.value
        for family in text_string_to_metric_families(get(bad.url + "/metrics")[2])
        for s in family.samples
    }
    assert bad_samples[("opsflow_health_status", None)] == 0
    assert bad_samples[("opsflow_health_check_up", "redis")] == 0

    code, _, body = get(good.url + "/admin")
    assert code == 404 and json.loads(body)["paths"] == ["/health", "/metrics"]

    outputs = [body, text, json.dumps(document)] + [s.stop() for s in servers]
    assert all(PASSWORD not in output for output in outputs)
    assert "serving http://127.0.0.1:" in outputs[-1]
