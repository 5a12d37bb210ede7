"""--mode queue: chunks as deployment runs, drained by two real Prefect workers on this machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]
PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture
def two_workers(prefect_api, tmp_path):
    env = dict(
        os.environ,
        PREFECT_API_URL=prefect_api,
        OPSFLOW_HOME=str(tmp_path / "home"),
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    env.pop("OPSFLOW_DATABASE_URL", None)
    subprocess.run(
        [PREFECT, "work-pool", "create", "opsflow-process", "--type", "process"], env=env, capture_output=True
    )
    deployed = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--name", "files-chunk"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    workers, logs = [], []
    for name in ("w1", "w2"):
        log = tmp_path / f"{name}.log"
        logs.append(log)
        workers.append(
            subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "opsflow-process", "--name", name, "--limit", "2"],
                env=env,
                stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    yield env, logs
    for worker in workers:  # a worker needs a second SIGINT to stop: end its whole group instead
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def test_queue_mode_spreads_chunks_over_two_workers(two_workers, tmp_path):
    env, logs = two_workers
    src = tmp_path / "in"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02d}.txt").write_text(f"{i}\n")
    (src / "bad.txt").write_text("bad\n")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch", "files", "run", str(src), "-p", "grep -qv bad {input} && cp {input} {output}",
         "-o", str(out), "--mode", "queue", "--chunk-size", "10", "--retries", "1", "--retry-delay", "0", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    import json

    summary = json.loads(done.stdout)
    assert summary["processed"] == 40 and summary["dead_lettered"] == 1
    assert len(list(out.iterdir())) == 40
    took = [len(re.findall(r"submitted to infrastructure", log.read_text())) for log in logs]
    assert all(n >= 1 for n in took) and sum(took) == 5, took  # both workers drained chunks
