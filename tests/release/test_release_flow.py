"""The release flow on a real Prefect server: blue-green, approval through Prefect's pause/input,
automatic rollback, the release log, and the terminal commands around it."""

from __future__ import annotations

import json
import subprocess
import sys

from flows.release import instances
from flows.release.target import Target
from tests.conftest import ROOT
from tests.paused import wait_paused
from tests.receivers import Receiver


def opsflow(*args: str, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.batch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def deploy_args(version, root, ports, *extra) -> list[str]:
    return [
        "release", "deploy", version, "--root", str(root),
        "--blue-port", str(ports["blue_port"]), "--green-port", str(ports["green_port"]),
        "--router-port", str(ports["router_port"]), *extra,
    ]  # fmt: skip


def start_deploy(version, root, ports, *extra, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.batch", *deploy_args(version, root, ports, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def live(root, ports) -> dict:
    return instances.probe(instances.health_url(ports["router_port"]))[1]


def history(env: str) -> list[dict]:
    done = opsflow("release", "history", "-e", env, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_staging_releases_alternate_colors_and_keep_the_old_one(prefect_api, target_root, ports, app):
    first = opsflow(*deploy_args("1.0", target_root, ports, "--source", str(app), "-e", "staging-a"))
    assert first.returncode == 0, first.stderr
    assert "staging-a: 1.0 is live on blue" in first.stdout
    second = opsflow(
        *deploy_args("1.1", target_root, ports, "--source", str(app), "-e", "staging-a", "--json")
    )
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["details"] == {"live": "green", "live_version": "1.1", "previous": "1.0"}
    assert live(target_root, ports) == {"status": "ok", "version": "1.1", "color": "green"}
    assert (
        instances.probe(instances.health_url(ports["blue_port"]))[1]["version"] == "1.0"
    )  # kept for rollback
    status = opsflow("release", "status", "-e", "staging-a", "--root", str(target_root), "--json")
    doc = json.loads(status.stdout)
    assert (doc["live"], doc["blue"], doc["green"]) == ("green", "1.0", "1.1")
    assert [p["health"] for p in doc["processes"]] == [200, 200, 200]
    rolled = opsflow(
        "release", "rollback", "-e", "staging-a", "--root", str(target_root), "-r", "customer report"
    )
    assert rolled.returncode == 0, rolled.stderr
    assert live(target_root, ports)["version"] == "1.0"
    rows = history("staging-a")
    assert [(r["version"], r["outcome"]) for r in rows] == [
        ("1.0", "rolled_back"),
        ("1.1", "released"),
        ("1.0", "released"),
    ]
    assert rows[0]["reason"] == "customer report"


def test_a_release_failing_its_test_is_rolled_back_and_live_is_untouched(
    prefect_api, target_root, ports, app, tmp_path
):
    assert (
        opsflow(*deploy_args("1.0", target_root, ports, "--source", str(app), "-e", "staging-b")).returncode
        == 0
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "HEALTH").write_text("fail\n")
    done = opsflow(*deploy_args("2.0", target_root, ports, "--source", str(broken), "-e", "staging-b"))
    assert done.returncode == 1, done.stderr
    assert "staging-b: 2.0 not released, rolled back" in done.stderr and "green stopped" in done.stderr
    assert live(target_root, ports) == {"status": "ok", "version": "1.0", "color": "blue"}
    assert (
        Target(target_root).version("green") is None and instances.running_pid(target_root, "green") is None
    )
    assert history("staging-b")[0]["outcome"] == "failed"


def test_production_waits_for_approval_and_a_rejection_rolls_back(
    prefect_api, target_root, ports, app, monkeypatch
):
    hook = Receiver()
    monkeypatch.setenv("OPSFLOW_NOTIFY_OPS", hook.url)
    try:
        assert opsflow(*deploy_args("1.0", target_root, ports, "--source", str(app), "-e", "production", "--approval", "never")).returncode == 0  # fmt: skip
        proc = start_deploy(
            "2.0", target_root, ports, "--source", str(app), "-e", "production", "--notify", "ops"
        )
        run_id = wait_paused()
        # while paused, green serves 2.0 but traffic stays on blue
        assert instances.probe(instances.health_url(ports["green_port"]))[1]["version"] == "2.0"
        assert live(target_root, ports)["version"] == "1.0"
        assert opsflow("approve", run_id, "--reject").returncode == 3  # a rejection needs a reason
        decided = opsflow("approve", run_id, "--reject", "--reason", "change freeze", "--as", "carol")
        assert decided.returncode == 0, decided.stderr
        assert "rejected flow run" in decided.stdout and "as carol: change freeze" in decided.stdout
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 1, err
        assert "approval rejected by carol: change freeze" in err
        assert live(target_root, ports) == {"status": "ok", "version": "1.0", "color": "blue"}
        assert opsflow("approve", run_id).returncode == 3  # no longer waiting
        titles = [json.loads(b)["title"] for b in hook.bodies]
        assert titles == [
            "opsflow: release 2.0 started (production)",
            "opsflow: release 2.0 requires approval (production)",
            "opsflow: release 2.0 rolled back (production)",
        ]
        asking = json.loads(hook.bodies[1])["message"]
        assert f"python -m flows.batch approve {run_id}" in asking and f"/runs/flow-run/{run_id}" in asking
    finally:
        hook.close()
    row = history("production")[0]
    assert (row["version"], row["outcome"], row["approved_by"]) == ("2.0", "rejected", "carol")


def test_approved_release_goes_live_and_a_failing_check_after_the_switch_switches_back(
    prefect_api, target_root, ports, app
):
    assert opsflow(*deploy_args("1.0", target_root, ports, "--source", str(app), "-e", "prod-c", "--approval", "never")).returncode == 0  # fmt: skip
    proc = start_deploy(
        "2.0", target_root, ports, "--source", str(app), "-e", "prod-c", "--approval", "required"
    )
    decided = opsflow("approve", wait_paused(), "--reason", "tested", "--as", "dave")
    assert decided.returncode == 0, decided.stderr
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert f"prod-c: 2.0 is live on green (:{ports['router_port']}); blue keeps 1.0 for rollback" in out
    assert live(target_root, ports)["version"] == "2.0"
    assert history("prod-c")[0]["approved_by"] == "dave"

    # 3.0 passes its test on blue, then breaks while waiting: the check after the switch fails
    proc = start_deploy(
        "3.0", target_root, ports, "--source", str(app), "-e", "prod-c", "--approval", "required"
    )
    run_id = wait_paused()
    (Target(target_root).release_dir("3.0") / "HEALTH").write_text("fail\n")
    assert opsflow("approve", run_id).returncode == 0
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "traffic back on green (2.0)" in err
    assert live(target_root, ports) == {"status": "ok", "version": "2.0", "color": "green"}


def test_no_decision_in_time_is_a_rejection(prefect_api, target_root, ports, app):
    proc = start_deploy("1.0", target_root, ports, "--source", str(app), "-e", "prod-d", "--approval", "required", "--approval-timeout", "2s")  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "approval rejected: no decision within 2.0s" in err
    assert live(target_root, ports)["status"] == "no live color"  # a first release: nothing live before
    assert history("prod-d")[0]["outcome"] == "rejected"


def test_rollback_refuses_when_the_other_color_is_unhealthy(prefect_api, target_root, ports, app):
    assert (
        opsflow(*deploy_args("1.0", target_root, ports, "--source", str(app), "-e", "staging-e")).returncode
        == 0
    )
    nothing = opsflow("release", "rollback", "-e", "staging-e", "--root", str(target_root))
    assert nothing.returncode == 2 and "green serves no release" in nothing.stderr
    assert live(target_root, ports)["version"] == "1.0"
