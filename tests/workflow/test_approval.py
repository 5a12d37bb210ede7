"""Workflow steps with `manual_approval: true` pause the run (Prefect pause/input) until `approve`."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from tests.paused import wait_paused

WORKFLOW = """
name: gated
parameters:
  - name: marker
    required: true
steps:
  - name: build
    command: echo built
  - name: ship
    depends_on: [build]
    manual_approval: true
    command: echo shipped > {{ .marker }}
"""


def start(path, marker) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.batch", "run", str(path), "--set", f"marker={marker}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def approve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.batch", "approve", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_an_approved_step_runs_and_a_rejected_one_fails_the_run(prefect_api, write_workflow, tmp_path):
    path, marker = write_workflow(WORKFLOW), tmp_path / "shipped"
    proc = start(path, marker)
    run_id = wait_paused()
    assert not marker.exists()
    assert approve(run_id, "--as", "erin").returncode == 0
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert marker.read_text() == "shipped\n"
    assert "run step `ship` of gated (development): approved by erin" in err

    proc = start(path, tmp_path / "second")
    done = approve(wait_paused(), "--reject", "--reason", "not on a Friday")
    assert done.returncode == 0, done.stderr
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err
    assert not (tmp_path / "second").exists()
    assert "run step `ship` of gated (development): rejected by" in err and "not on a Friday" in err
    assert "ship" in out and "Failed" in out and "approval rejected" in out, out
