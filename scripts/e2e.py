#!/usr/bin/env python
"""End to end, for real: prefect.yaml deployed to a Prefect server, run by a worker, seen in the UI.

    .venv/bin/python scripts/e2e.py [--keep] [--out DIR] [--only CHECK]

Starts `prefect server start` on a free port with a Prefect home of its own (SQLite), creates
the `opsflow-process` pool, runs `prefect deploy --all` on the project's prefect.yaml, starts a
process worker, then runs each check in CHECKS and prints it as PASS or FAIL with its time.
Exit 0 when every check passed, 1 when one failed, 130 on Ctrl-C; the worker and the server
are stopped in every case (the worker's process group by SIGKILL: a Prefect worker needs a
second SIGINT; the server's by SIGTERM, then SIGKILL).

A check is `check_<what>(stack) -> str`: it raises (AssertionError or CheckFailed) with what
went wrong, or returns a one-line detail. To add one, append it to CHECKS and add a test that
calls it in tests/test_e2e.py, which runs the same checks under one module-scoped Stack. A run
that stops half-way (a paused release waiting for its approval) is started without waiting:

    started = stack.run_deployment("release-production", {"version": "1.2.3"}, wait=False)
    stack.wait_for_state(started.run.id, "PAUSED")
    assert stack.opsflow("approve", str(started.run.id)).returncode == 0
    assert stack.wait_for_state(started.run.id, "COMPLETED", "FAILED").state.is_completed()
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POOL = "opsflow-process"
UNREACHABLE = "127.0.0.1:1"  # refuses at once: a scheduled maintenance run must not find a real target
PASSING = "run-workflow/basic-deployment"  # a sample workflow: shell commands under its `workdir`
if str(ROOT) not in sys.path:  # run as a script: `flows` from this checkout, not another install
    sys.path.insert(0, str(ROOT))


class CheckFailed(AssertionError):
    """A step or check did not hold; the message says what was seen (and where the logs are)."""


@dataclass
class Triggered:
    """A deployment run started by the CI command (`python -m flows.batch trigger`)."""

    run: Any  # prefect.client.schemas.objects.FlowRun, read after the command ended
    exit_code: int
    output: str  # the command's stderr: its state and log lines
    doc: dict[str, Any] = field(default_factory=dict)  # its --json document


class Stack:
    """A Prefect server, the project's deployments and a process worker, in processes of their own.

    `start()` runs SETUP in order; `stop()` (also on `with` exit and at interpreter exit) ends
    every process group it started. Everything it writes goes under `out`.
    """

    def __init__(self, out: Path, root: Path = ROOT, query_seconds: int = 1):
        self.out, self.root = out.resolve(), root
        self.out.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self.worker_name = f"opsflow-e2e-{self.port}"
        self.config = yaml.safe_load((root / "prefect.yaml").read_text())
        self.deployed_at: datetime | None = None
        self.runs: list[Triggered] = []  # every run started through run_deployment, oldest first
        self.processes: dict[str, subprocess.Popen] = {}  # "server", "worker" while they run
        self.env = self._environment(query_seconds)

    def _environment(self, query_seconds: int) -> dict[str, str]:
        # Nothing of the caller's Prefect profile, API or database may leak into this stack.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        for name in ("OPSFLOW_DATABASE_URL", "DATABASE_URL", "REDIS_URL"):
            env.pop(name, None)
        env.update(
            PREFECT_HOME=str(self.out / "prefect-home"),
            PREFECT_API_URL=self.api_url,
            PREFECT_UI_URL=self.url,
            PREFECT_UI_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_WORKER_QUERY_SECONDS=str(query_seconds),
            OPSFLOW_SERVER="reuse",
            OPSFLOW_HOME=str(self.out / "opsflow-home"),
            # prefect.yaml schedules maintenance procedures too: if the worker picks one up
            # while the stack runs, it fails to connect instead of touching a real database.
            OPSFLOW_TARGET_DATABASE_URL=f"postgresql://opsflow-e2e@{UNREACHABLE}/none",
            OPSFLOW_REDIS_URL=f"redis://{UNREACHABLE}/0",
            OPSFLOW_BACKUP_DIR=str(self.out / "backups"),
        )
        return env

    # ---- lifecycle

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Stack:
        for _, step in SETUP:
            step(self)
        return self

    def start_server(self, timeout: float = 120) -> str:
        """`prefect server start` until /api/health answers; returns the API URL."""
        cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self._spawn("server", cmd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes["server"].poll() is not None:
                raise CheckFailed(
                    f"the server exited with {self.processes['server'].returncode}" + self.tail("server")
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self.api_url
            time.sleep(0.5)
        raise CheckFailed(f"no answer from {self.api_url}/health in {timeout:g}s" + self.tail("server"))

    def create_pool(self) -> None:
        self.prefect("work-pool", "create", POOL, "--type", "process")

    def deploy_all(self) -> list[str]:
        """`prefect deploy --all` of the real prefect.yaml, from the project root."""
        self.deployed_at = datetime.now(UTC)
        done = self.prefect("--no-prompt", "deploy", "--all", timeout=600)
        (self.out / "deploy.log").write_text(done.stdout + done.stderr)
        return [d["name"] for d in self.config["deployments"]]

    def start_worker(self, timeout: float = 60) -> None:
        """A process worker on the pool, from the project root, until the server lists it."""
        name = self.worker_name
        self._spawn("worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", name])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes["worker"].poll() is not None:
                raise CheckFailed(
                    f"the worker exited with {self.processes['worker'].returncode}" + self.tail("worker")
                )
            with self.client() as client:
                if any(w.name == name for w in client.read_workers_for_work_pool(POOL)):
                    return
            time.sleep(0.5)
        raise CheckFailed(f"worker {name} did not reach the server in {timeout:g}s" + self.tail("worker"))

    def stop(self) -> None:
        """Kill the worker's group and the flow runs it started (each in a session of its own),
        then end the server's group (SIGTERM, SIGKILL after 10 s)."""
        worker, server = self.processes.pop("worker", None), self.processes.pop("server", None)
        if worker is not None:
            kill_group(worker, signal.SIGKILL)
            for group in groups_with_env("PREFECT_API_URL", self.api_url):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
        if server is not None:
            kill_group(server, signal.SIGTERM, grace=10)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.out / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                cmd, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        atexit.register(self.stop)  # stop() is idempotent; this covers an exit that skips __exit__

    # ---- helpers for checks

    def prefect(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """The Prefect CLI against this stack, from the project root; a non-zero exit fails."""
        done = self.command([str(BIN / "prefect"), *args], timeout=timeout)
        if done.returncode != 0:
            raise CheckFailed(
                f"prefect {' '.join(args)} exited {done.returncode}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
            )
        return done

    def opsflow(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """`python -m flows.batch ARGS` as CI runs it: from the project root, against this stack."""
        return self.command([sys.executable, "-m", "flows.batch", *args], timeout=timeout)

    def command(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def client(self):
        """A synchronous Prefect client of this stack's API (use it as a context manager)."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url)

    def run_deployment(
        self, name: str, params: dict[str, Any] | None = None, *, wait: bool = True, timeout: float = 120
    ) -> Triggered:
        """Start a run of deployment `name` with the CI command; with `wait`, follow it to its end.

        Without `wait` the command returns as soon as the run exists (state Scheduled): use
        `wait_for_state` for a run that pauses, e.g. one waiting for an approval.
        """
        args = ["trigger", name, "--json"]
        for key, value in (params or {}).items():  # string parameters take the text as typed
            args += ["--param", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
        if wait:
            args += ["--wait", "--timeout", f"{timeout:g}s"]
        done = self.opsflow(*args, timeout=timeout + 60)
        try:
            doc = json.loads(done.stdout)
        except ValueError:
            raise CheckFailed(
                f"trigger {name} exited {done.returncode} without a JSON document: {done.stderr[-2000:]}"
            ) from None
        triggered = Triggered(self.read_flow_run(doc["id"]), done.returncode, done.stderr, doc)
        self.runs.append(triggered)
        return triggered

    def read_flow_run(self, run_id: Any):
        from uuid import UUID

        with self.client() as client:
            return client.read_flow_run(UUID(str(run_id)))

    def wait_for_state(self, run_id: Any, *state_types: str, timeout: float = 60):
        """Poll the run until its state type is one of `state_types` (e.g. "PAUSED"); the run."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.read_flow_run(run_id)
            if run.state and run.state.type.value in state_types:
                return run
            if time.monotonic() > deadline:
                raise CheckFailed(
                    f"flow run {run.name} ({run.id}) is {run.state.name}, not {'/'.join(state_types)}, after {timeout:g}s"
                )
            time.sleep(0.5)

    def deployment(self, name: str):
        """The server's deployment of prefect.yaml's deployment `name` (any flow)."""
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        with self.client() as client:
            found = client.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
            )
        if len(found) != 1:
            raise CheckFailed(f"{len(found)} deployments named {name!r} on the server")
        return found[0]

    def tail(self, name: str, chars: int = 2000) -> str:
        path = self.out / f"{name}.log"
        text = path.read_text(errors="replace")[-chars:] if path.exists() else ""
        return f"\n--- last of {path}:\n{text}" if text else ""


SETUP: list[tuple[str, Callable[[Stack], Any]]] = [
    ("start the Prefect server", Stack.start_server),
    (f"create work pool {POOL}", Stack.create_pool),
    ("prefect deploy --all", Stack.deploy_all),
    ("start a process worker", Stack.start_worker),
]


# ---- checks


def check_deployments(stack: Stack) -> str:
    """Every deployment of prefect.yaml is on the server, with its entrypoint, pool and schedules."""
    with stack.client() as client:
        on_server = {d.name: d for d in client.read_deployments(limit=200)}
    wanted = stack.config["deployments"]
    missing = [d["name"] for d in wanted if d["name"] not in on_server]
    assert not missing, f"not on the server: {', '.join(missing)}"
    for spec in wanted:
        dep = on_server[spec["name"]]
        assert dep.entrypoint == spec["entrypoint"], f"{dep.name}: entrypoint {dep.entrypoint}"
        assert dep.work_pool_name == spec["work_pool"]["name"], f"{dep.name}: pool {dep.work_pool_name}"
        crons = sorted((s.schedule.cron, s.schedule.timezone, s.active) for s in dep.schedules)
        expected = sorted(
            (s["cron"], s.get("timezone", "UTC"), s.get("active", True)) for s in spec.get("schedules", [])
        )
        assert crons == expected, f"{dep.name}: schedules {crons}, prefect.yaml says {expected}"
    return f"{len(wanted)} deployments, on pool {POOL}"


def check_cron_schedules(stack: Stack, timeout: float = 90) -> str:
    """The server's scheduler makes future runs at each active cron's times, none for inactive ones."""
    schedules = [(d["name"], s) for d in stack.config["deployments"] for s in d.get("schedules", [])]
    active: dict[str, list[dict]] = {}
    for name, schedule in schedules:
        if schedule.get("active", True):
            active.setdefault(name, []).append(schedule)
    inactive = sorted({name for name, _ in schedules} - set(active))
    assert active, "prefect.yaml has no active cron schedule"
    deadline = time.monotonic() + timeout
    while not all((times := {name: scheduled_times(stack, name) for name in active}).values()):
        if time.monotonic() > deadline:
            empty = [name for name, found in times.items() if not found]
            raise CheckFailed(f"no scheduled runs after {timeout:g}s for {', '.join(empty)}")
        time.sleep(2)
    for name, crons in active.items():
        got = times[name]
        want = sorted(
            {
                t
                for c in crons
                for t in cron_times(c["cron"], ZoneInfo(c.get("timezone", "UTC")), got[0], got[-1])
            }
        )
        said = " + ".join(c["cron"] for c in crons)
        assert got == want, f"{name} ({said}): runs at {fmt(got)}, the cron says {fmt(want)}"
        assert got[0] >= stack.deployed_at, f"{name}: a run at {got[0]:%F %T}, before the deploy"
    for name in inactive:
        assert not scheduled_times(stack, name), f"{name}: its schedule is inactive, yet it has runs"
    total = sum(len(t) for t in times.values())
    return f"{total} runs for {len(active)} cron deployments, at their cron times; none for {', '.join(inactive) or '-'}"


def check_trigger_completes(stack: Stack) -> str:
    """The CI command `trigger DEPLOYMENT --wait` exits 0 when the worker's run completes."""
    workdir = stack.out / "basic-deployment"
    started = stack.run_deployment(PASSING, {"parameters": {"workdir": str(workdir)}})
    run = started.run
    log = started.output[-2000:] + stack.tail("worker")
    assert started.exit_code == 0, f"exit {started.exit_code}: {log}"
    assert run.state.is_completed(), f"{run.name} ({run.id}) is {run.state.name}"
    assert run.deployment_id == stack.deployment(PASSING.split("/")[1]).id
    manifest = workdir / "staging-services" / "api" / "current" / "manifest.json"
    assert manifest.is_file(), f"the run left no {manifest}: it did not run the workflow's commands"
    return f"{run.name} ({run.id}) Completed in {run.total_run_time.total_seconds():.1f}s"


def check_trigger_fails(stack: Stack) -> str:
    """The CI command exits 1 when the run fails (a parameter the workflow refuses)."""
    params = {"parameters": {"image_tag": "bad tag!", "workdir": str(stack.out / "basic-deployment-bad")}}
    started = stack.run_deployment(PASSING, params)
    run = started.run
    assert started.exit_code == 1, f"exit {started.exit_code}: {started.output[-2000:]}"
    assert run.state.is_failed(), f"{run.name} ({run.id}) is {run.state.name}"
    assert "image_tag" in (run.state.message or ""), run.state.message
    return f"{run.name} ({run.id}) Failed: {run.state.message}"


def check_ui_shows_run(stack: Stack, out: Path | None = None) -> str:
    """Headless Chromium renders the completed run's page in the Prefect UI; a screenshot is kept."""
    chromium = find_chromium()
    if chromium is None:
        raise CheckFailed("no chromium on PATH (apt-get install -y chromium)")
    completed = [t.run for t in stack.runs if t.exit_code == 0 and t.run.state.is_completed()]
    if not completed:  # run alone (--only ui_shows_run): make one first
        check_trigger_completes(stack)
        completed = [stack.runs[-1].run]
    run = completed[-1]
    out = (out or stack.out).resolve()
    page = f"{stack.url}/runs/flow-run/{run.id}"
    png = out / f"flow-run-{run.name}-{str(run.id)[:8]}.png"
    flow, deployment = PASSING.split("/")
    # the page title, its header (flow, deployment, state) and its logs (the run's id, our worker)
    wanted = [f"Flow Run: {run.name}", flow, deployment, run.state.name, str(run.id), stack.worker_name]
    for budget in (15_000, 30_000, 60_000):  # virtual time: the app's API calls answer first
        dom = browse(
            chromium, page, ["--dump-dom", f"--screenshot={png}", "--hide-scrollbars"], budget, out
        ).stdout
        if all(text in dom for text in wanted):
            break
    (out / "flow-run.html").write_text(dom)
    missing = [text for text in wanted if text not in dom]
    assert not missing, (
        f"{page} rendered without {missing} (DOM in {out / 'flow-run.html'}, screenshot {png})"
    )
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no screenshot at {png}"
    return f"{page} shows {run.name}; screenshot {png}"


def check_release_approval(stack: Stack) -> str:
    """A production release pauses for approval (the UI shows the paused run), `approve` resumes
    it through the API, and the new version is live behind the router."""
    from flows.release import instances

    root = stack.out / "release-production"
    router, blue, green = free_port(), free_port(), free_port()
    params = {
        "version": "1.2.3",
        "root": str(root),
        "router_port": router,
        "blue_port": blue,
        "green_port": green,
    }
    try:
        started = stack.run_deployment("release-production", params, wait=False)
        paused = stack.wait_for_state(started.run.id, "PAUSED", timeout=180)
        details = paused.state.state_details
        assert details.run_input_keyset, (
            f"{paused.name} is paused without asking for input: no form in the UI"
        )
        chromium, out = find_chromium(), stack.out.resolve()
        if chromium is not None:  # the paused run's page offers to resume it (the approval form)
            png = out / f"flow-run-{paused.name}-paused.png"
            page = f"{stack.url}/runs/flow-run/{paused.id}"
            for budget in (10_000, 20_000):  # a paused run's page keeps polling: retry on a slow render
                dom = browse(
                    chromium, page, ["--dump-dom", f"--screenshot={png}"], budget, out, wall=30
                ).stdout
                if "Paused" in dom and "Resume" in dom:
                    break
            assert "Paused" in dom and "Resume" in dom, (
                f"{page} shows no paused run to resume (screenshot {png})"
            )
        health = instances.probe(
            instances.health_url(green if instances.running_pid(root, "green") else blue)
        )
        assert health[1].get("version") == "1.2.3", (
            f"the idle color does not serve 1.2.3 while paused: {health}"
        )
        done = stack.opsflow("approve", str(paused.id), "--reason", "e2e", "--as", "e2e")
        assert done.returncode == 0, done.stderr[-2000:]
        run = stack.wait_for_state(paused.id, "COMPLETED", "FAILED", "CRASHED", timeout=120)
        assert run.state.is_completed(), f"{run.name} ({run.id}) is {run.state.name}: {run.state.message}"
        live = instances.probe(instances.health_url(router))
        assert live[0] == 200 and live[1].get("version") == "1.2.3", f"the router serves {live}"
        return f"{run.name} ({run.id}) paused, approved through the API, 1.2.3 live on :{router}"
    finally:
        for name in ("router", "blue", "green"):
            instances.stop(root, name)


CHECKS: list[Callable[[Stack], str]] = [
    check_deployments,
    check_cron_schedules,
    check_trigger_completes,
    check_trigger_fails,
    check_ui_shows_run,
    check_release_approval,
]


# ---- pure helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_group(proc: subprocess.Popen, sig: signal.Signals, grace: float = 0) -> None:
    """Send `sig` to the process's group; after `grace` seconds still running, SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace or 10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children left in the group (flow runs, subprocesses)


def groups_with_env(name: str, value: str) -> set[int]:
    """Process groups (not ours) of processes whose environment has name=value (Linux /proc)."""
    entry, groups = f"{name}={value}".encode(), set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if entry in environ.read_bytes().split(b"\0"):
                groups.add(os.getpgid(int(environ.parent.name)))
    return groups - {os.getpgrp()}


def cron_field_matches(expr: str, value: int, low: int, high: int) -> bool:
    """One cron field: `*`, `N`, `A-B`, with `/STEP`, comma-separated; numbers only."""
    for part in expr.split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (int(x) for x in span.split("-"))
        else:
            first = last = int(span)
            last = high if step else last
        if first <= value <= last and (value - first) % int(step or 1) == 0:
            return True
    return False


def cron_matches(cron: str, when: datetime) -> bool:
    """Whether the five-field `cron` fires at `when` (a local time); day of month and of week
    are or-ed when both are restricted, as cron does."""
    minute, hour, mday, month, wday = cron.split()
    weekday = when.isoweekday() % 7  # Sunday 0 (7 as well)
    by_mday = cron_field_matches(mday, when.day, 1, 31)
    by_wday = cron_field_matches(wday, weekday, 0, 7) or (weekday == 0 and cron_field_matches(wday, 7, 0, 7))
    both = not mday.startswith("*") and not wday.startswith("*")
    return (
        cron_field_matches(minute, when.minute, 0, 59)
        and cron_field_matches(hour, when.hour, 0, 23)
        and cron_field_matches(month, when.month, 1, 12)
        and ((by_mday or by_wday) if both else (by_mday and by_wday))
    )


def cron_times(cron: str, zone: ZoneInfo, first: datetime, last: datetime) -> list[datetime]:
    """Every time from `first` to `last` (inclusive, whole minutes) at which `cron` fires in `zone`."""
    when = first.astimezone(UTC).replace(second=0, microsecond=0)
    when += timedelta(minutes=1) if when < first else timedelta(0)
    found = []
    while when <= last:
        if cron_matches(cron, when.astimezone(zone)):
            found.append(when)
        when += timedelta(minutes=1)
    return found


def scheduled_times(stack: Stack, name: str) -> list[datetime]:
    """Expected start times of the runs the scheduler made for deployment `name`, not started yet."""
    from flows.schedule import auto_scheduled_runs

    with stack.client() as client:
        runs = auto_scheduled_runs(client, stack.deployment(name).id, limit=200)
    return [datetime.fromtimestamp(r.expected_start_time.timestamp(), UTC) for r in runs]  # not Pendulum's


def fmt(times: list[datetime]) -> str:
    return ", ".join(f"{t:%F %H:%M}" for t in times[:6]) + (" ..." if len(times) > 6 else "")


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def browse(
    chromium: str, url: str, action: list[str], budget_ms: int, out: Path, wall: float = 60
) -> subprocess.CompletedProcess:
    """Headless Chromium on `url` for `budget_ms` of virtual time (and `wall` more seconds at
    most), in a throwaway profile; its whole process group is killed afterwards. A render that
    runs out of wall time returns an empty page, so callers can retry."""
    with tempfile.TemporaryDirectory(prefix="opsflow-e2e-chromium-") as profile:
        cmd = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--window-size=1400,900", f"--virtual-time-budget={budget_ms}",
            *action, url,
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            stdout, stderr = proc.communicate(timeout=budget_ms / 1000 + wall)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", "timed out"
        finally:
            kill_group(proc, signal.SIGKILL)
    with open(out / "chromium.log", "a") as log:
        log.write(f"$ {' '.join(cmd)}\n{stderr}\n")
    if proc.returncode != 0 and stderr != "timed out":
        raise CheckFailed(f"chromium exited {proc.returncode} on {url} (see {out / 'chromium.log'})")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


# ---- command line


def timed(title: str, action: Callable[[], Any]) -> tuple[bool, Any]:
    """Run one step, print `PASS|FAIL  seconds  title: detail`; (passed, its result)."""
    started = time.monotonic()
    try:
        result = action()
    except Exception as exc:  # a check that breaks fails; the others still run
        why = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
        print(f"FAIL {time.monotonic() - started:6.1f}s  {title}: {why}", flush=True)
        return False, None
    detail = f": {result}" if isinstance(result, str) else ""
    print(f"PASS {time.monotonic() - started:6.1f}s  {title}{detail}", flush=True)
    return True, result


def title_of(check: Callable[..., Any]) -> str:
    return (check.__doc__ or check.__name__).strip().splitlines()[0].rstrip(".")


def main(argv: list[str] | None = None) -> int:
    names = [c.__name__.removeprefix("check_") for c in CHECKS]
    parser = argparse.ArgumentParser(
        description="End to end, for real: a Prefect server, `prefect deploy --all` of prefect.yaml, "
        "a process worker, the CI trigger command and the UI in headless Chromium.",
        epilog="checks: " + "; ".join(f"{n}: {title_of(c)}" for n, c in zip(names, CHECKS, strict=True)),
    )
    parser.add_argument(
        "--out", type=Path, help="where logs, the DOM and screenshots go (default: a new temp dir)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="after the checks, keep the server and worker up until Ctrl-C"
    )
    parser.add_argument(
        "--only", action="append", choices=names, metavar="CHECK", help="run only this check (repeatable)"
    )
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="opsflow-e2e-"))
    checks = [c for n, c in zip(names, CHECKS, strict=True) if not args.only or n in args.only]
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` tears down like Ctrl-C
    print(f"output in {out.resolve()}", flush=True)
    failed = 0
    try:
        with Stack(out) as stack:
            print(f"Prefect server {stack.url} (home {stack.env['PREFECT_HOME']})", flush=True)
            for title, step in SETUP:
                if not timed(title, lambda step=step: step(stack))[0]:
                    return 1
            for check in checks:
                failed += not timed(title_of(check), lambda check=check: check(stack))[0]
            print(f"{len(checks) - failed} passed, {failed} failed; output in {stack.out}", flush=True)
            if args.keep:
                print(f"--keep: UI at {stack.url}, worker on {POOL}; Ctrl-C stops them", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
    except KeyboardInterrupt:
        print("interrupted: stopping the worker and the server", file=sys.stderr, flush=True)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
