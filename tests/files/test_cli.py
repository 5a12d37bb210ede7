"""`files` commands end to end in subprocesses: exit codes, JSON, history, report, dlq."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("prefect_api")


def opsflow(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "flows.batch", "files", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
    )


def test_files_commands(tmp_path):
    env = dict(os.environ, OPSFLOW_HOME=str(tmp_path / "home"))
    env.pop("OPSFLOW_DATABASE_URL", None)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.txt", "b.txt", "broken.txt"):
        (src / name).write_text(name)
    out = tmp_path / "out"
    proc = "grep -qv broken {input} && cp {input} {output}"

    dry = opsflow("run", str(src), "-p", proc, "-o", str(out), "--dry-run", env=env)
    assert dry.returncode == 10 and "3 to process" in dry.stdout and not out.exists()

    done = opsflow(
        "run", str(src), "-p", proc, "-o", str(out), "--retries", "1", "--retry-delay", "0", "--json", env=env
    )
    assert done.returncode == 1, done.stderr[-1500:]
    summary = json.loads(done.stdout)
    assert summary["processed"] == 2 and summary["dead_lettered"] == 1
    assert (tmp_path / "home" / "batches" / summary["job_id"] / "metrics.prom").exists()

    dlq = opsflow("dlq", "list", "--json", env=env)
    items = json.loads(dlq.stdout)
    assert dlq.returncode == 0 and [i["input_path"].endswith("broken.txt") for i in items] == [True]
    show = opsflow("dlq", "show", str(items[0]["id"]), env=env)
    assert show.returncode == 0 and "processors" in show.stdout

    history = opsflow("history", "--json", env=env)
    assert json.loads(history.stdout)[0]["id"] == summary["job_id"]
    report = opsflow("report", summary["job_id"][:8], "--json", env=env)
    statuses = sorted(f["status"] for f in json.loads(report.stdout)["files"])
    assert statuses == ["completed", "completed", "dead_lettered"]

    fixed = opsflow("dlq", "reprocess", "-p", "cp {input} {output}", env=env)
    assert fixed.returncode == 0 and "1 resolved" in fixed.stdout
    assert (out / "broken.txt").read_text() == "broken.txt"

    again = opsflow("run", str(src), "-p", proc, "-o", str(out), "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == 3  # resolved items count as done


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["run", "/nonexistent/dir", "-p", "cat {input}"], 3, "no such file"),
        (["run", ".", "-p", "echo hi"], 3, "command using {input}"),
        (["run", ".", "-p", "cat {input}", "--mode", "warp"], 3, "--mode must be"),
        (["report", "zzzzzzzz"], 3, "no batch job"),
        (["dlq", "show", "999999"], 3, "no dead-letter item"),
        (["serve", "--root", ".", "-p", "cat {input}"], 3, "must hold the shared secret"),
        (
            ["serve", "--root", ".", "-p", "cat {input}", "--secret-env", "OPSFLOW_TEST_UNSET_SECRET"],
            3,
            "OPSFLOW_TEST_UNSET_SECRET must hold the shared secret",
        ),
        (
            ["run", "tests", "--root", "/tmp/nowhere-else", "-p", "cat {input}"],
            5,
            "outside the allowed roots",
        ),
    ],
)
def test_bad_input_exit_codes(tmp_path, args, code, needle):
    env = dict(os.environ, OPSFLOW_HOME=str(tmp_path / "home"))
    env.pop("OPSFLOW_DATABASE_URL", None)
    done = opsflow(*args, env=env)
    assert done.returncode == code, done.stderr[-1500:]
    assert needle in done.stderr and "Traceback" not in done.stderr


def test_config_file_with_environment_overrides(tmp_path):
    env = dict(os.environ, OPSFLOW_HOME=str(tmp_path / "home"))
    env.pop("OPSFLOW_DATABASE_URL", None)
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("a")
    config = tmp_path / "batches.yaml"
    config.write_text(
        f"defaults:\n  processor: 'cp {{input}} {{output}}'\n  output: {tmp_path / 'dflt'}\n"
        f"environments:\n  production:\n    output: {tmp_path / 'prod'}\n"
    )
    prod = opsflow("run", str(src), "--config", str(config), "-e", "production", "--dry-run", env=env)
    assert prod.returncode == 10 and str(tmp_path / "prod" / "a.txt") in prod.stdout
    cli_wins = opsflow(
        "run", str(src), "--config", str(config), "-o", str(tmp_path / "x"), "--dry-run", env=env
    )
    assert str(tmp_path / "x" / "a.txt") in cli_wins.stdout
    lonely = opsflow("run", str(src), "-e", "production", "--dry-run", env=env)
    assert lonely.returncode == 3 and "give --config too" in lonely.stderr


def test_serve_applies_its_options(tmp_path):
    """`files serve` in its own process: limits, tolerance, rotated secrets and the callback
    allow-list from the environment all reach the running intake; Ctrl-C stops it with 0."""
    import signal
    import socket
    import time
    import urllib.error
    import urllib.request

    from flows.files.webhook import signature

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = tmp_path / "root"
    root.mkdir()
    env = dict(
        os.environ,
        OPSFLOW_HOME=str(tmp_path / "home"),
        NEW_SECRET="new-secret-new-secret",
        OLD_SECRET="old-secret-old-secret",
        OPSFLOW_WEBHOOK_CALLBACK_HOSTS="127.0.0.1",
    )
    env.pop("OPSFLOW_DATABASE_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.batch", "files", "serve", "--root", str(root), "-p", "cat {input}",
         "--port", str(port), "--secret-env", "NEW_SECRET", "--secret-env", "OLD_SECRET",
         "--max-body", "512", "--signature-tolerance", "5"],
        stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip

    def post(raw: bytes, header: str) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhook", data=raw, headers={"X-Opsflow-Signature": header}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        for line in server.stderr:
            if "accepting signed events" in line:
                break
        old = b"old-secret-old-secret"
        big = b"x" * 600
        assert post(big, signature(old, big))[0] == 413
        stale = b"{}"
        assert post(stale, signature(old, stale, time.time() - 60))[0] == 401
        elsewhere = json.dumps(
            {"event_type": "file_uploaded", "file_path": "a.txt", "callback_url": "http://10.0.0.1/"}
        ).encode()
        assert post(elsewhere, signature(old, elsewhere))[0] == 400
        listed = json.dumps(
            {"event_type": "file_uploaded", "file_path": "a.txt", "callback_url": "http://127.0.0.1:9/"}
        ).encode()
        assert post(listed, signature(old, listed)) == (
            404,
            {"accepted": False, "error": "'a.txt' does not exist"},
        )
    finally:
        server.send_signal(signal.SIGINT)
        rest = server.communicate(timeout=60)[1]
    assert server.returncode == 0, rest[-1500:]
    assert "Traceback" not in rest
