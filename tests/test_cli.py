"""The command line: commands, options, exit codes, output formats."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from flows.batch import main

from .conftest import FIXTURES, ROOT, SAMPLES, mark_health_check

LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[(INFO|WARNING|ERROR|DEBUG)\] \[[^\]]+\] .+")


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


def test_help_lists_every_command(capsys):
    assert cli("--help") == 0
    out = capsys.readouterr().out
    for command in ("run", "validate", "plan", "list", "reference", "server"):
        assert command in out
    for command in (
        ["run"],
        ["validate"],
        ["plan"],
        ["list"],
        ["reference"],
        ["server", "status"],
        ["server", "stop"],
    ):
        assert cli(*command, "--help") == 0
        text = capsys.readouterr().out
        assert "--verbose" in text and "--quiet" in text, command


def test_validate_ok_and_json(capsys):
    refused = {"error-handling", "advanced-deployment"}  # see tests/workflow/test_recovery.py
    seeds = [p for p in sorted((FIXTURES / "seed001").glob("*.yaml")) if p.stem not in refused]
    # best-practice-example uses `.services` without declaring it: validate as the run is given it
    assert cli("validate", "--set", "services=api,worker", *map(str, seeds)) == 0
    assert capsys.readouterr().out.count("ok  ") == 8
    assert cli("validate", "--json", str(FIXTURES / "seed001" / "basic-deployment.yaml")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["valid"] and data[0]["steps"] == 5


def test_validate_error_is_one_line_exit_3(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  - name: a\n    comand: echo\n")
    assert cli("validate", str(bad)) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and LOG_LINE.match(err[0])
    assert f"{bad}:4: unknown key `comand` — did you mean `command`?" in err[0]


def test_usage_errors_are_exit_3(capsys):
    assert cli("run") == 3
    assert cli("run", "x.yaml", "--parallel", "0") == 3
    assert cli("nope") == 3


@pytest.fixture
def advanced_seed(tmp_path):
    path = tmp_path / "advanced-deployment.yaml"
    path.write_text(mark_health_check((FIXTURES / "seed001" / "advanced-deployment.yaml").read_text()))
    return path


def test_plan_renders_and_quotes(capsys, advanced_seed):
    path = advanced_seed
    assert cli("plan", str(path), "-e", "production", "--set", "services=api,x; rm -rf /") == 0
    out = capsys.readouterr().out
    assert "for service in api 'x; rm -rf /'; do" in out
    assert "switch_traffic  [after test_green_environment; waits for approval" in out
    assert "manual_approval" not in out
    assert cli("plan", str(path), "-e", "staging", "--set", "services=api", "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    skipped = {s["id"]: s["skip"] for s in plan["steps"] if s["skip"]}
    assert "backup_check" in skipped and "switch_traffic" in skipped


def test_dry_run_exits_10_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: d\nsteps:\n  - command: touch {marker}\n")
    assert cli("run", str(wf), "--dry-run") == 10
    assert f"touch {marker}" in capsys.readouterr().out
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "novalue"], "key=value"),
        (["--timeout", "soon"], "--timeout"),
        (["-e", "qa", "--set", "services=api"], "does not match"),
    ],
)
def test_bad_options_exit_3(args, needle, capsys, advanced_seed):
    path = advanced_seed
    assert cli("run", str(path), *args) == 3
    assert needle in capsys.readouterr().err


def test_list(capsys):
    assert cli("list", str(SAMPLES)) == 0
    out = capsys.readouterr().out
    assert "basic-deployment" in out and "--set" in out
    assert cli("list", str(SAMPLES), "--json") == 0
    entries = json.loads(capsys.readouterr().out)
    assert all(e["valid"] for e in entries) and len(entries) >= 10
    assert cli("list", str(ROOT / "nope")) == 3


def test_reference_is_up_to_date():
    assert cli("reference", "-o", str(ROOT / "docs" / "workflow-reference.md"), "--check") == 0, (
        "run: python -m flows.batch reference -o docs/workflow-reference.md"
    )


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "opsflow")
    done = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "validate" in done.stdout


# -- whole runs in a subprocess, against the session's Prefect server ------------------------


def opsflow(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.batch", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=dict(os.environ),
        timeout=120,
    )


@pytest.mark.usefixtures("prefect_api")
def test_run_success_log_format_and_json(tmp_path):
    wf = tmp_path / "wf.yaml"
    pwned = tmp_path / "pwned"
    wf.write_text(
        "name: cli-run\nparameters:\n  - name: msg\nsteps:\n  - name: say\n    command: echo said {{ .msg }}\n"
    )
    done = opsflow("run", str(wf), "--set", f"msg=hi; touch {pwned}", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "Completed" and summary["steps"][0]["state"] == "Completed"
    assert not pwned.exists()
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert any(f"[cli-run] say: said hi; touch {pwned}" in line for line in lines)
    assert all(LOG_LINE.match(line) for line in lines if line.startswith("[")), lines


@pytest.mark.usefixtures("prefect_api")
def test_run_exit_codes(tmp_path):
    fail = tmp_path / "fail.yaml"
    fail.write_text("name: f\nsteps:\n  - name: boom\n    command: exit 4\n")
    done = opsflow("run", str(fail))
    assert done.returncode == 1
    assert "boom" in done.stdout and "Failed" in done.stdout
    pre = tmp_path / "pre.yaml"
    pre.write_text(
        "name: p\nprerequisites:\n  - name: needs_tool\n    command: 'false'\nsteps:\n  - command: 'true'\n"
    )
    done = opsflow("run", str(pre))
    assert done.returncode == 2
    assert "prerequisite `needs_tool` failed" in done.stderr
    done = opsflow("run", str(tmp_path / "missing.yaml"))
    assert done.returncode == 3 and "no such file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "tests/fixtures/seed001/basic-deployment.yaml"],
        ["plan", "tests/fixtures/seed001/basic-deployment.yaml"],
        ["list"],
        ["run", "--dry-run", "tests/fixtures/seed001/basic-deployment.yaml"],
        ["templates"],
        ["create", "x", "--template", "deployment", "--output", "README.md"],  # refused: it exists
    ],
    ids=lambda a: a[0] if a[0] != "run" else "dry-run",
)
def test_pure_commands_do_not_import_prefect(args):
    code = (
        "import sys\nfrom flows.batch import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "print('prefect' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr
