"""Past one machine: a Prefect server on PostgreSQL, N workers draining one work pool.

    .venv/bin/python bench/scale_out.py [--runs 50] [--workers 2] [--limit 3] [--keep] [--sqlite]

Starts everything from scratch and tears it down afterwards (unless --keep), even on Ctrl-C:
a scratch PostgreSQL database for the server and one for the marks; `prefect server start`
on the first, with a PREFECT_HOME of its own; a process work pool; a deployment of the
generic flow `run_workflow` (the way `opsflow schedule add` makes one) running a one-step
workflow that inserts its flow-run id into the marks table; N `prefect worker start --limit L`
processes. Then it triggers all runs at once and waits for every one to be final.

Checked: as many distinct runs as triggered, all Completed, each with run_count 1 and exactly
one mark (the marks table has no unique key, so a second execution shows as a second row
rather than as a failed insert); the marks also say which worker ran each run
(PREFECT__WORKER_NAME, set by the worker in the run's environment). Measured: wall time from
the trigger to the last run's end (runs/min), CPU seconds of the server's process tree and of
the workers' (flow runs included) from /proc, the peak of PostgreSQL connections to the
server's database, and "database is locked" lines in the logs (`--sqlite` runs the server on
SQLite instead, to compare). Exit 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

PREFECT = str(Path(sys.executable).with_name("prefect"))
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEPLOYMENT = "scale-out"
POOL = "opsflow-scale-out"
# One step, no unique key: a run executed twice leaves two rows instead of failing its insert.
MARK_WORKFLOW = """\
name: scale-out-mark
description: Records this flow run's id, its worker, host and process once per execution.
steps:
  - name: mark
    command: >-
      psql -X -q -v ON_ERROR_STOP=1 -d "$OPSFLOW_SCALE_OUT_MARKS_URL" -c "INSERT INTO marks
      (flow_run_id, worker, host, pid) VALUES
      ('$OPSFLOW_WORKFLOW_ID', '${PREFECT__WORKER_NAME:-none}', '$(hostname)', $PPID)"
"""
MARKS_TABLE = """
CREATE TABLE marks (
    seq bigserial PRIMARY KEY,
    flow_run_id uuid NOT NULL,
    worker text NOT NULL,
    host text NOT NULL,
    pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


@dataclass
class Result:
    runs: int
    workers: int
    limit: int
    triggered: int = 0
    distinct: int = 0
    states: Counter = field(default_factory=Counter)
    ran_once: int = 0  # Prefect's view: run_count == 1
    marks: int = 0
    duplicated: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # marks of runs nobody triggered
    split: Counter = field(default_factory=Counter)  # worker name -> runs it executed
    trigger_seconds: float = 0.0
    first_start_seconds: float = 0.0
    wall_seconds: float = 0.0  # trigger -> the last run's end
    median_run_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    workers_cpu_seconds: float = 0.0
    measured_seconds: float = 0.0  # trigger -> all seen final (the CPU window)
    pg_connections_peak: int = 0
    load_before: float = 0.0  # the machine's 1-minute load average at the trigger
    server_database: str = ""  # what the server keeps its state in
    locked: int = 0  # "database is locked" lines in the server's and workers' logs
    started: list[int] = field(default_factory=list)  # process groups and databases, for
    databases: list[str] = field(default_factory=list)  # checking the teardown
    kept: str = ""  # with keep: where the stack is and how to stop it
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def runs_per_minute(self) -> float:
        return self.distinct / self.wall_seconds * 60 if self.wall_seconds else 0.0

    @property
    def server_cpu_percent(self) -> float:
        return 100 * self.server_cpu_seconds / self.measured_seconds if self.measured_seconds else 0.0


# --- processes ---------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()  # the name may hold spaces: fields after it


def process_tree(root: int) -> list[int]:
    """`root` and its live descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process tree; children already reaped count through their parent's
    cutime/cstime, live ones on their own, so nothing is counted twice."""
    ticks = 0
    for pid in process_tree(root):
        if fields := _stat(pid):
            ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def kill_group(proc: subprocess.Popen, grace: float = 0.0) -> None:
    """SIGTERM then SIGKILL (or SIGKILL at once) to the process group `proc` leads, then to any
    descendant that left it."""
    stragglers = process_tree(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        if grace:
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in stragglers[1:]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    """What one scale-out run started: scratch databases, the server, the workers."""

    admin_url: str
    tmp: Path
    name: str = field(default_factory=lambda: f"opsflow_scale_{uuid.uuid4().hex[:8]}")
    databases: list[str] = field(default_factory=list)
    server: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    api_url: str = ""
    sqlite: bool = False  # the server on SQLite in its PREFECT_HOME, for comparison

    @property
    def server_db(self) -> str:
        return self.name

    @property
    def marks_db(self) -> str:
        return f"{self.name}_marks"

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.admin_url.split('://', 1)[1].rsplit('/', 1)[0]}/{database}"

    def env(self) -> dict[str, str]:
        env = dict(
            os.environ,
            PREFECT_HOME=str(self.tmp / "prefect-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            OPSFLOW_HOME=str(self.tmp / "opsflow-home"),
        )
        env.pop("PREFECT_API_URL", None)
        env.pop("PREFECT_PROFILE", None)
        return env

    def create_databases(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in (self.marks_db,) if self.sqlite else (self.server_db, self.marks_db):
                conn.execute(f'CREATE DATABASE "{name}"')
                self.databases.append(name)
        with psycopg.connect(self.url(self.marks_db), autocommit=True) as conn:
            conn.execute(MARKS_TABLE)

    def start_server(self, ui: bool = False, timeout: float = 120) -> None:
        port = free_port()
        env = self.env() | {"PREFECT_UI_ENABLED": str(ui).lower()}
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        if not self.sqlite:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.url(self.server_db, "postgresql+asyncpg")
        log = self.tmp / "server.log"
        with open(log, "wb") as out:
            self.server = subprocess.Popen(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.api_url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + timeout
        while not api_healthy(self.api_url):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start; its log ends:\n{tail(log)}")
            time.sleep(0.5)

    def start_workers(self, count: int, limit: int) -> list[str]:
        env = self.env() | {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            # Flow runs inherit the worker's environment: the URL stays out of run parameters.
            "OPSFLOW_SCALE_OUT_MARKS_URL": self.url(self.marks_db),
        }
        names = []
        for n in range(1, count + 1):
            name = f"{self.name}-w{n}"
            with open(self.tmp / f"worker-{n}.log", "wb") as out:
                self.workers.append(
                    subprocess.Popen(
                        [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"]
                        + ["--name", name, "--limit", str(limit)],
                        env=env,
                        cwd=self.tmp,  # the deployment's pull step takes each run to the project
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # a worker needs a second SIGINT: killed by group
                    )
                )
            names.append(name)
        return names

    def log_files(self) -> list[Path]:
        return [
            self.tmp / "server.log",
            *(self.tmp / f"worker-{n}.log" for n in range(1, len(self.workers) + 1)),
        ]

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{tail(path)}" for path in self.log_files())

    def close(self) -> None:
        for worker in self.workers:
            kill_group(worker)
        if self.server is not None:
            kill_group(self.server, grace=10)
        if self.databases:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                for name in self.databases:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(self.tmp, ignore_errors=True)

    def kept(self) -> str:
        workers = " ".join(f"-{w.pid}" for w in self.workers)
        drops = " ".join(f"-c 'DROP DATABASE \"{name}\" WITH (FORCE)'" for name in self.databases)
        return (
            f"kept: PREFECT_API_URL={self.api_url} (UI at {self.api_url.removesuffix('/api')}), "
            f"logs in {self.tmp}\n"
            f"stop: kill -KILL -- {workers}; kill -TERM -- -{self.server.pid if self.server else ''}; "
            f"psql {self.admin_url} {drops}; rm -r {self.tmp}"
        )


@contextlib.contextmanager
def stack(admin_url: str, keep: bool = False) -> Iterator[Stack]:
    """A Stack torn down on the way out, failures and Ctrl-C included, unless `keep`."""
    started = Stack(admin_url=admin_url, tmp=Path(tempfile.mkdtemp(prefix="opsflow-scale-out-")))
    try:
        yield started
    except BaseException:
        print(started.kept() if keep else started.logs(), file=sys.stderr)
        raise
    finally:
        if not keep:
            started.close()


# --- the Prefect part --------------------------------------------------------------------------


def create_pool() -> None:
    """The process work pool, before any worker starts (a worker would create it otherwise)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process", base_job_template=template))


def deploy() -> uuid.UUID:
    """A deployment of run_workflow on the pool, the way `opsflow schedule add` makes one
    (without a schedule): the workflow's path comes with each run's parameters."""
    from prefect.client.orchestration import get_client

    from flows.schedule import ENTRYPOINT, FLOW_NAME
    from flows.schedule import ROOT as SOURCE
    from flows.workflow.run import run_workflow

    run_workflow.from_source(source=str(SOURCE), entrypoint=ENTRYPOINT).to_deployment(
        name=DEPLOYMENT, work_pool_name=POOL, tags=["opsflow", "scale-out"]
    ).apply()
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(f"{FLOW_NAME}/{DEPLOYMENT}").id


def wait_for_workers(names: list[str], timeout: float = 60) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            online = {w.name for w in client.read_workers_for_work_pool(POOL) if w.status == "ONLINE"}
            if set(names) <= online:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not online after {timeout:.0f}s: {sorted(set(names) - online)}")
            time.sleep(0.5)


async def trigger(deployment_id: uuid.UUID, count: int, parameters: dict) -> list:
    """`count` runs of the deployment, all requested at once; a refused one is its exception."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await asyncio.gather(
            *(
                client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
                for _ in range(count)
            ),
            return_exceptions=True,
        )


def read_runs(client, deployment_id: uuid.UUID) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    runs, page = [], 200
    only_ours = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    while batch := client.read_flow_runs(flow_run_filter=only_ours, offset=len(runs), limit=page):
        runs += batch
        if len(batch) < page:
            break
    return runs


def server_connections(admin_url: str, database: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone()[0]


def wait_final(deployment_id: uuid.UUID, runs: int, timeout: float, result: Result, connections) -> list:
    """The deployment's runs once `runs` of them are final (or `timeout` ran out: a problem), with
    the peak of `connections()` sampled meanwhile."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            seen = read_runs(client, deployment_id)
            result.pg_connections_peak = max(result.pg_connections_peak, connections())
            if len(seen) >= runs and all(r.state and r.state.is_final() for r in seen):
                return seen
            if time.monotonic() > deadline:
                result.problems.append(f"not all runs final after {timeout:.0f} s")
                return seen
            time.sleep(1)


def scale_out(
    runs: int = 50,
    workers: int = 2,
    limit: int = 3,
    admin_url: str = DEFAULT_ADMIN_URL,
    timeout: float = 600,
    keep: bool = False,
    sqlite: bool = False,
    log=print,
) -> Result:
    """Start the stack, trigger `runs` runs at once, wait, check and measure; see the module doc."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    admin_url = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    result = Result(runs=runs, workers=workers, limit=limit)
    with stack(admin_url, keep) as s:
        s.sqlite = sqlite
        s.create_databases()
        result.databases = list(s.databases)
        if sqlite:
            result.server_database = "SQLite"
        else:
            with psycopg.connect(admin_url) as conn:
                version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
            result.server_database = f"PostgreSQL {version}"
        began = time.perf_counter()
        log(f"starting the Prefect server on {result.server_database} ...")
        s.start_server(ui=keep)
        log(f"server at {s.api_url} after {time.perf_counter() - began:.1f} s; starting {workers} workers")
        with temporary_settings(updates={PREFECT_API_URL: s.api_url}):
            create_pool()
            names = s.start_workers(workers, limit)
            result.started = [p.pid for p in [s.server, *s.workers]]
            deployment_id = deploy()
            workflow = s.tmp / "scale-out-mark.yaml"
            workflow.write_text(MARK_WORKFLOW)
            wait_for_workers(names)
            log(f"workers online after {time.perf_counter() - began:.1f} s; triggering {runs} runs at once")

            server_cpu = tree_cpu_seconds(s.server.pid)
            workers_cpu = sum(tree_cpu_seconds(w.pid) for w in s.workers)
            result.load_before = os.getloadavg()[0]
            started_at, started = datetime.now(UTC), time.perf_counter()
            created = asyncio.run(trigger(deployment_id, runs, {"path": str(workflow)}))
            result.trigger_seconds = time.perf_counter() - started
            if refused := [r for r in created if isinstance(r, BaseException)]:
                result.problems.append(f"{len(refused)} runs not created: {refused[0]!r}")
                created = [r for r in created if not isinstance(r, BaseException)]

            def connections() -> int:
                return 0 if sqlite else server_connections(admin_url, s.server_db)

            seen = wait_final(deployment_id, len(created), timeout, result, connections)
            result.measured_seconds = time.perf_counter() - started
            result.server_cpu_seconds = tree_cpu_seconds(s.server.pid) - server_cpu
            result.workers_cpu_seconds = sum(tree_cpu_seconds(w.pid) for w in s.workers) - workers_cpu

        check(result, created, seen, read_marks(s.url(s.marks_db)), started_at)
        result.locked = sum(
            path.read_text(errors="replace").count("database is locked") for path in s.log_files()
        )
        if result.problems and not keep:
            log(s.logs())
        result.kept = s.kept() if keep else ""
    return result


def read_marks(marks_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(marks_url) as conn:
        return [(str(r[0]), r[1]) for r in conn.execute("SELECT flow_run_id, worker FROM marks ORDER BY seq")]


def check(result: Result, created: list, seen: list, marks: list[tuple[str, str]], started_at) -> None:
    """Fill in the checks and timings of `result` from the runs and the marks."""
    ids = {str(r.id) for r in created}
    result.triggered, result.distinct = len(created), len(ids)
    result.states = Counter(r.state.name if r.state else "none" for r in seen)
    result.ran_once = sum(1 for r in seen if r.run_count == 1)
    per_run = Counter(run_id for run_id, _ in marks)
    result.marks = len(marks)
    result.duplicated = sorted(i for i, n in per_run.items() if n > 1)
    result.lost = sorted(ids - set(per_run))
    result.unknown = sorted(set(per_run) - ids)
    result.split = Counter(worker for _, worker in marks)

    done = [r for r in seen if r.start_time and r.end_time]
    if done:
        result.first_start_seconds = (min(r.start_time for r in done) - started_at).total_seconds()
        result.wall_seconds = (max(r.end_time for r in done) - started_at).total_seconds()
        result.median_run_seconds = statistics.median(
            (r.end_time - r.start_time).total_seconds() for r in done
        )

    expected = result.runs
    for what, got in [
        ("runs triggered", result.triggered),
        ("distinct run ids", result.distinct),
        ("runs the server knows", len({str(r.id) for r in seen})),
        ("Completed runs", result.states["Completed"]),
        ("runs with run_count 1", result.ran_once),
        ("marks", result.marks),
    ]:
        if got != expected:
            result.problems.append(f"{what}: {got}, expected {expected}")
    for what, which in [("ran more than once", result.duplicated), ("never ran", result.lost)]:
        if which:
            result.problems.append(f"{len(which)} runs {what}: {', '.join(which[:5])}")
    if result.unknown:
        result.problems.append(f"marks of {len(result.unknown)} runs nobody triggered")


def report(result: Result) -> str:
    split = ", ".join(f"{name.rsplit('-', 1)[-1]}: {n}" for name, n in sorted(result.split.items()))
    rows = [
        ("runs triggered / distinct", f"{result.triggered} / {result.distinct}"),
        ("final states", ", ".join(f"{k}: {v}" for k, v in sorted(result.states.items()))),
        ("run_count == 1", f"{result.ran_once}"),
        ("marks / duplicated / lost", f"{result.marks} / {len(result.duplicated)} / {len(result.lost)}"),
        ("split between workers", split or "-"),
        (f"trigger {result.triggered} runs (gather)", f"{result.trigger_seconds:.2f} s"),
        ("first run started after", f"{result.first_start_seconds:.1f} s"),
        ("trigger -> last run ended", f"{result.wall_seconds:.1f} s"),
        ("throughput", f"{result.runs_per_minute:.1f} runs/min"),
        ("median run (start -> end)", f"{result.median_run_seconds:.1f} s"),
        (
            "server CPU (process tree)",
            f"{result.server_cpu_seconds:.1f} s = {result.server_cpu_percent:.0f}% of one core "
            f"over {result.measured_seconds:.0f} s",
        ),
        ("workers + flow runs CPU", f"{result.workers_cpu_seconds:.1f} s"),
        ("server's PostgreSQL connections, peak", f"{result.pg_connections_peak or '-'}"),
        ("'database is locked' in the logs", f"{result.locked}"),
        ("load average at the trigger", f"{result.load_before:.1f}"),
    ]
    lines = [
        f"scale-out: {result.runs} runs, {result.workers} workers (--limit {result.limit} each), "
        f"Prefect server on {result.server_database}, {os.cpu_count()} cores",
        f"{'measure':<38} value",
        *(f"{name:<38} {value}" for name, value in rows),
        "ok: every run completed exactly once"
        if result.ok
        else "FAILED:\n" + "\n".join(f"  - {p}" for p in result.problems),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50, help="deployment runs triggered at once")
    parser.add_argument("--workers", type=int, default=2, help="worker processes on the pool")
    parser.add_argument("--limit", type=int, default=3, help="runs at once per worker (--limit)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for all runs to be final")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("OPSFLOW_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL allowed to CREATE and DROP DATABASE",
    )
    parser.add_argument("--keep", action="store_true", help="leave the server, workers and databases")
    parser.add_argument(
        "--sqlite",
        action="store_true",
        help="the server on SQLite instead, to compare (marks stay in PostgreSQL)",
    )
    args = parser.parse_args()
    # `kill` of this script tears down like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = scale_out(
        args.runs, args.workers, args.limit, args.admin_url, args.timeout, args.keep, args.sqlite
    )
    print(report(result))
    if result.kept:
        print(result.kept)
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
