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
