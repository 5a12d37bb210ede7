"""Shared pools: `resource_limits.shared` as Prefect global concurrency limits, across runs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from flows.errors import ValidationError
from flows.workflow.dispatch import Reservation
from flows.workflow.load import parse_workflow
from flows.workflow.pools import Claim, PoolWaitEnded, SharedPool, declare, describe_limits, hold
from flows.workflow.reference import render_reference
from flows.workflow.spec import ResourceLimits

MI = 2**20


# -- the field, pure ---------------------------------------------------------------------


def test_shared_needs_a_memory_or_cpu_limit_to_share():
    with pytest.raises(ValidationError) as info:
        parse_workflow(
            "name: w\nresource_limits:\n  max_parallel: 2\n  shared: host-1\nsteps:\n  - command: 'true'\n",
            Path("t.yaml"),
        )
    assert "`shared` pools memory and CPU: give `memory_limit` and/or `cpu_limit` too" in str(info.value)


def test_a_pool_name_must_fit_a_prefect_limit_name():
    with pytest.raises(ValidationError):
        parse_workflow(
            "name: w\nresource_limits: {memory_limit: 1Gi, shared: 'a/b'}\nsteps:\n  - command: 'true'\n",
            Path("t.yaml"),
        )


def test_pool_sizes_and_claims_are_whole_slots_never_below_the_reservation():
    pool = SharedPool.of(ResourceLimits(memory_limit="1G", cpu_limit="1.5", shared="h"))
    assert pool == SharedPool("h", {"memory": 953, "cpu": 1500})  # 1G is 953.7Mi: rounded down
    assert pool.slots(Reservation(int(100.5 * MI), 0.0015)) == {"memory": 101, "cpu": 2}  # rounded up
    assert pool.slots(Reservation(None, 0.25)) == {"cpu": 250}
    only_memory = SharedPool.of(ResourceLimits(memory_limit="1Gi", shared="h"))
    assert only_memory.slots(Reservation(None, 2.0)) == {}  # the pool has no cpu: nothing to hold
    assert SharedPool.of(ResourceLimits(memory_limit="1Gi")) is None


def test_plan_and_reference_say_whether_the_limits_are_shared():
    assert describe_limits(ResourceLimits(memory_limit="1Gi", cpu_limit="2")) == (
        "memory 1Gi, cpu 2 reserved at once by this run's steps (not shared with other runs)"
    )
    assert describe_limits(ResourceLimits(memory_limit="1Gi", shared="h")) == (
        "memory 1Gi reserved at once, shared with every run naming pool `h` "
        "(Prefect global concurrency limits opsflow-memory-h)"
    )
    assert describe_limits(ResourceLimits(max_parallel=3)) == ""
    reference = render_reference()
    assert "| `shared` |" in reference and "`opsflow-memory-NAME` (1 slot = 1Mi)" in reference


# -- against the session's Prefect server ---------------------------------------------------


class Lines:
    """A logger that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, text: str) -> None:
        self.lines.append(text)

    warning = info


def _limit(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


@pytest.mark.usefixtures("prefect_api")
def test_each_run_sets_the_pool_to_what_it_declares_and_says_so_when_that_changes_it():
    name = f"p{uuid.uuid4().hex[:8]}"
    log = Lines()
    declare(SharedPool(name, {"memory": 2048}), log)
    declare(SharedPool(name, {"memory": 2048}), log)
    declare(SharedPool(name, {"memory": 1024}), log)
    assert log.lines[0] == f"shared pool `{name}`: memory 2Gi (created)"
    assert len(log.lines) == 2  # the same size again: nothing to say
    assert log.lines[1].startswith(f"shared pool `{name}`: memory was 2Gi, now 1Gi as this workflow declares")
    assert _limit(f"opsflow-memory-{name}").limit == 1024


@pytest.mark.usefixtures("prefect_api")
def test_runs_creating_a_pool_at_once_all_go_on_with_the_one_limit():
    name = f"p{uuid.uuid4().hex[:8]}"
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def run() -> None:
        start.wait()
        try:
            declare(SharedPool(name, {"memory": 1024}), Lines())
        except BaseException as exc:  # noqa: BLE001 - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _limit(f"opsflow-memory-{name}").limit == 1024


@pytest.mark.usefixtures("prefect_api")
def test_a_run_that_loses_the_race_to_create_a_pool_reads_it_whatever_status_the_server_gave():
    """The server may notice the duplicate name only when it commits, and answer other than
    409: the run that lost must read the limit the winner made, not fail."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.workflow.pools import _ensure

    name = f"opsflow-memory-p{uuid.uuid4().hex[:8]}"

    with get_client(sync_client=True) as client:
        real_create = client.create_global_concurrency_limit

        def other_run_wins(limit: GlobalConcurrencyLimitCreate):
            real_create(GlobalConcurrencyLimitCreate(name=limit.name, limit=512))  # the winner
            request = httpx.Request("POST", "http://server/v2/concurrency_limits/")
            response = httpx.Response(500, request=request)
            raise httpx.HTTPStatusError("UNIQUE constraint failed", request=request, response=response)

        client.create_global_concurrency_limit = other_run_wins
        assert _ensure(client, name, 1024) == 512  # the size it found, set to ours
    assert _limit(name).limit == 1024


@pytest.mark.usefixtures("prefect_api")
def test_a_step_larger_than_the_pool_takes_all_of_it_and_a_full_pool_ends_at_the_deadline():
    name = f"p{uuid.uuid4().hex[:8]}"
    pool = SharedPool(name, {"memory": 1024})
    declare(pool, Lines())
    log = Lines()
    with hold(Claim(pool, {"memory": 4096}), "huge", log):
        assert _limit(f"opsflow-memory-{name}").active_slots == 1024
        deadline = time.time() + 1
        with (
            pytest.raises(PoolWaitEnded) as info,
            hold(Claim(pool, {"memory": 1}), "tiny", log, deadline),
        ):
            pass
        assert info.value.timed_out and time.time() >= deadline  # waited until its deadline, then gave up
    assert log.lines == [
        f"`tiny` waits for shared pool `{name}`: needs 1Mi memory; 1Gi of 1Gi held across runs"
    ]
    assert _limit(f"opsflow-memory-{name}").active_slots == 0


def _workflow(tmp_path: Path, pool: str | None) -> Path:
    """Two steps of 600Mi each under 1Gi: one at a time within a run; across runs only if shared.

    The first step to start (in either run) holds on until the test creates `release`, so
    the other run surely tries while it runs, however slow the machine (`_two_runs_at_once`)."""
    shared = f"\n  shared: {pool}" if pool else ""
    steps = "\n".join(
        f"      - name: s{i}\n        resources: {{memory: 600Mi}}\n"
        f"        command: touch {tmp_path}/started-$OPSFLOW_PARAM_RUN; start=$(date +%s.%N); "
        f"if mkdir {tmp_path}/first 2>/dev/null; then until [ -e {tmp_path}/release ]; do sleep 0.05; done; fi; "
        f'sleep 0.5; echo "$OPSFLOW_PARAM_RUN s{i} $start $(date +%s.%N)" >> {tmp_path}/spans'
        for i in range(2)
    )
    path = tmp_path / "mem.yaml"
    path.write_text(
        f"name: mem\nparameters:\n  - name: run\nresource_limits:\n  memory_limit: 1Gi{shared}\n"
        f"steps:\n  - name: g\n    parallel: true\n    steps:\n{steps}\n"
    )
    return path


def _two_runs_at_once(path: Path, pool: str | None) -> tuple[list[tuple[str, float, float]], str]:
    """Run the workflow in two processes at the same time; their step spans and output.

    The first step holds on until the other run has met it: with a shared pool, until a run
    said it waits for the pool; without, until a step of each run has started."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.batch", "run", str(path), "--set", f"run={run}", "--no-save-state"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for run in ("A", "B")
    ]
    outputs: list[list[str]] = [[], []]
    readers = [
        threading.Thread(target=lambda p=p, o=o: o.extend(p.stdout))
        for p, o in zip(procs, outputs, strict=True)
    ]
    for reader in readers:
        reader.start()
    here = path.parent

    def met() -> bool:
        if pool is not None:
            return any(f"waits for shared pool `{pool}`" in line for out in outputs for line in list(out))
        return (here / "started-A").exists() and (here / "started-B").exists()

    deadline = time.time() + 180
    while not met() and time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    (here / "release").touch()  # on time or not: the assertions below say what went wrong
    for proc, reader in zip(procs, readers, strict=True):
        proc.wait(timeout=180)
        reader.join()
    texts = ["".join(out) for out in outputs]
    assert [proc.returncode for proc in procs] == [0, 0], texts
    spans = []
    for line in (here / "spans").read_text().splitlines():
        run, step, start, end = line.split()
        spans.append((f"{run}.{step}", float(start), float(end)))
    return sorted(spans, key=lambda s: s[1]), "\n".join(texts)


def _overlaps(spans: list[tuple[str, float, float]]) -> list[tuple[str, str]]:
    return [(a[0], b[0]) for i, a in enumerate(spans) for b in spans[i + 1 :] if b[1] < a[2] and a[1] < b[2]]


@pytest.mark.usefixtures("prefect_api")
def test_runs_sharing_a_pool_take_turns_and_say_what_they_wait_for(tmp_path):
    name = f"p{uuid.uuid4().hex[:8]}"
    spans, output = _two_runs_at_once(_workflow(tmp_path, name), name)
    assert len(spans) == 4
    assert _overlaps(spans) == [], spans  # 4 x 600Mi under 1Gi: one step at a time, across runs
    assert "`s1` waits for room: needs 600Mi memory; 600Mi of 1Gi reserved by `s0`" in output
    # what holds the pool, or (when the two runs read it at the same moment) that the other won
    assert f"waits for shared pool `{name}`: needs 600Mi memory; " in output
    assert f"has room in shared pool `{name}` after" in output
    assert _limit(f"opsflow-memory-{name}").active_slots == 0


@pytest.mark.usefixtures("prefect_api")
def test_runs_not_sharing_a_pool_each_have_the_whole_limit(tmp_path):
    spans, output = _two_runs_at_once(_workflow(tmp_path, None), None)
    overlapping = _overlaps(spans)
    assert overlapping and all(a[0][0] != b[0][0] for a, b in overlapping), spans  # only across runs
    assert "shared pool" not in output


@pytest.mark.usefixtures("prefect_api")
def test_a_failed_or_timed_out_step_gives_its_slots_back(write_workflow, tmp_path):
    from flows.workflow.run import run_workflow

    name = f"p{uuid.uuid4().hex[:8]}"
    held = tmp_path / "held"
    read_held = (
        'python3 -c "import json, os, urllib.request; print(json.load(urllib.request.urlopen('
        f"os.environ['PREFECT_API_URL'] + '/v2/concurrency_limits/opsflow-memory-{name}'))['active_slots'])\""
        f" >> {held}"
    )
    path = write_workflow(
        f"name: fails\nresource_limits: {{memory_limit: 1Gi, shared: {name}}}\n"
        "error_handling: {strategy: continue_on_error}\nsteps:\n  - name: g\n    parallel: true\n    steps:\n"
        f"      - name: fails\n        resources: {{memory: 600Mi}}\n        command: {read_held}; exit 3\n"
        f"      - name: slow\n        resources: {{memory: 600Mi}}\n        timeout: 3\n"
        f"        command: {read_held}; sleep 30\n"
    )
    state = run_workflow(path=str(path), timeout="30s", return_state=True)  # not forever if one leaks
    steps = {s["step"]: s["state"] for s in state.result(raise_on_failure=False)["steps"]}
    assert steps == {"fails": "Failed", "slow": "TimedOut"}
    assert held.read_text().split() == ["600", "600"]  # each held its slots while it ran, in turn
    assert _limit(f"opsflow-memory-{name}").active_slots == 0  # and gave them back


@pytest.mark.usefixtures("prefect_api")
def test_a_step_waiting_for_a_full_pool_ends_with_the_runs_timeout(write_workflow):
    from flows.workflow.run import run_workflow

    name = f"p{uuid.uuid4().hex[:8]}"
    pool = SharedPool(name, {"memory": 1024})
    declare(pool, Lines())
    path = write_workflow(
        f"name: waits\nresource_limits: {{memory_limit: 1Gi, shared: {name}}}\nsteps:\n"
        "  - name: blocked\n    resources: {memory: 600Mi}\n    command: 'true'\n"
    )
    other_run = threading.Event()

    def occupy() -> None:
        with hold(Claim(pool, {"memory": 600}), "elsewhere", Lines()):
            other_run.wait(600)  # until the test ends: the step must give up at the run's timeout

    holder = threading.Thread(target=occupy)
    holder.start()
    try:
        while _limit(f"opsflow-memory-{name}").active_slots != 600:
            time.sleep(0.1)
        state = run_workflow(path=str(path), timeout="5s", return_state=True)
    finally:
        other_run.set()
        holder.join()
    (step,) = state.result(raise_on_failure=False)["steps"]
    assert step["state"] == "TimedOut"
    assert f"waited for shared pool `{name}`" in step["reason"]
