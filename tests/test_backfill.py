"""`opsflow backfill`: tick computation on plain data, then a real server and a real process worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from flows.backfill import cron_ticks, decide, localize, parse_when, run_name
from flows.batch import main
from flows.errors import ValidationError
from flows.schedule import FLOW_NAME

from .conftest import ROOT

PREFECT = str(Path(sys.executable).with_name("prefect"))
RUN = uuid.uuid4().hex[:6]  # unique names: the session's server is shared
PARIS, TOKYO = ZoneInfo("Europe/Paris"), ZoneInfo("Asia/Tokyo")


def cron(expr: str, timezone: str = "UTC"):
    from prefect.client.schemas.schedules import CronSchedule

    return CronSchedule(cron=expr, timezone=timezone)


def ticks(schedules, start: str, end: str, zone: str = "UTC", max_ticks: int = 1000) -> list[datetime]:
    window = localize(parse_when(start, "--from"), zone), localize(parse_when(end, "--to", end=True), zone)
    return asyncio.run(cron_ticks(schedules, *window, max_ticks))


# ---- pure parts


def test_dates_and_datetimes_and_a_bare_to_date_is_the_whole_day():
    assert parse_when("2026-11-01", "--from") == datetime(2026, 11, 1)
    assert parse_when("2026-11-03", "--to", end=True) == datetime(2026, 11, 3, 23, 59, 59, 999999)
    aware = parse_when("2026-11-01T02:00:00+01:00", "--to", end=True)
    assert aware == datetime(2026, 11, 1, 1, tzinfo=UTC)  # a datetime is taken as written
    assert localize(parse_when("2026-11-01T02:00", "--from"), "Europe/Paris").utcoffset() == timedelta(
        hours=1
    )
    with pytest.raises(ValidationError, match=r"--from 'yesterday': expected 2026-11-01 or") as info:
        parse_when("yesterday", "--from")
    assert info.value.exit_code == 3


def test_ticks_follow_the_schedules_timezone_across_a_dst_change():
    # Paris moves to summer time at 02:00 on 2026-03-29: Prefect runs that day's 02:00 at 03:00
    got = ticks([cron("0 2 * * *", "Europe/Paris")], "2026-03-28", "2026-03-30", "Europe/Paris")
    assert got == [
        datetime(2026, 3, 28, 2, tzinfo=PARIS),
        datetime(2026, 3, 29, 3, tzinfo=PARIS),
        datetime(2026, 3, 30, 2, tzinfo=PARIS),
    ]
    assert [t.utcoffset().total_seconds() / 3600 for t in got] == [1, 2, 2]
    assert run_name(got[1]) == "backfill-2026-03-29T03:00"


def test_window_edges_from_included_to_included():
    hourly = [cron("0 * * * *")]
    assert len(ticks(hourly, "2026-11-01T02:00", "2026-11-01T04:00")) == 3  # both edges are ticks
    assert len(ticks(hourly, "2026-11-01T02:00:01", "2026-11-01T03:59:59")) == 1
    assert len(ticks(hourly, "2026-11-01", "2026-11-01")) == 24  # a bare --to: the whole day
    assert ticks(hourly, "2026-11-01T02:30", "2026-11-01T02:45") == []


def test_several_schedules_are_merged_in_time_order():
    both = [cron("0 9 * * *", "Asia/Tokyo"), cron("0 0 * * *"), cron("0 9 * * *", "Asia/Tokyo")]
    got = ticks(both, "2026-11-01", "2026-11-02T12:00")
    assert got == [
        datetime(2026, 11, 1, tzinfo=UTC),  # 09:00 in Tokyo is 00:00 UTC: one tick, not two
        datetime(2026, 11, 2, tzinfo=UTC),
    ]
    assert got[0].tzinfo in (UTC, TOKYO) and [t.timestamp() for t in got] == sorted(
        t.timestamp() for t in got
    )


def test_too_many_ticks_are_refused_unless_max_ticks_allows_them():
    every_minute = [cron("* * * * *")]
    with pytest.raises(ValidationError, match=r"more than 1000 ticks of `\* \* \* \* \*`.*--max-ticks"):
        ticks(every_minute, "2026-11-01", "2026-11-01")
    assert len(ticks(every_minute, "2026-11-01", "2026-11-02", max_ticks=3000)) == 2880  # pages of 1,000


def run(name: str, when: datetime, state: str, created: int = 0):
    kind = SimpleNamespace(value=state.upper())
    return SimpleNamespace(
        id=name, name=name, expected_start_time=when.astimezone(UTC), created=datetime(2026, 1, 1, created, tzinfo=UTC),
        state=SimpleNamespace(type=kind, name=state),
    )  # fmt: skip


def test_completed_ticks_are_skipped_running_ones_followed_failed_ones_rerun():
    day = [datetime(2026, 11, d, 2, tzinfo=PARIS) for d in range(1, 7)]
    runs = [
        run("by-the-scheduler", day[0], "Completed"),
        run("old-failure", day[0], "Failed"),
        run("going", day[1], "Running"),
        run("first", day[2], "Failed", created=1),
        run("second", day[2], "Crashed", created=2),
        run("other-tick", day[3] + timedelta(minutes=1), "Completed"),
    ]
    plan = decide(day, runs, now=day[4] + timedelta(hours=1))
    assert [(t.action, t.reason, t.attempt) for t in plan] == [
        ("skip", "completed by by-the-scheduler", 0),
        ("follow", "already Running: going", 0),
        ("rerun", "second Crashed", 2),
        ("run", "", 0),
        ("run", "", 0),
        ("skip", "in the future: the schedule's to make", 0),
    ]
    assert (
        plan[0].row()["run_name"] == "by-the-scheduler"
        and plan[0].row()["tick"] == "2026-11-01T02:00:00+01:00"
    )


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(["backfill", *args])
    return info.value.code


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-13-01", "--to", "2026-11-02"], "--from '2026-13-01': expected"),
        (
            ["--from", "2026-11-01", "--to", "2026-11-02", "--timeout", "soon"],
            "--timeout: expected a duration",
        ),
        (
            ["--from", "2026-11-01", "--to", "2026-11-02", "--timeout", "1m", "--no-wait"],
            "--timeout needs --wait",
        ),
    ],
)
def test_bad_options_exit_3_before_any_api_call(args, message, capsys):
    assert cli("some-deployment", *args) == 3  # no server here: nothing to connect to
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_unreachable_api_exits_4_at_once_with_one_line():
    env = dict(os.environ, PREFECT_API_URL="http://127.0.0.1:1/api")
    # It gives up on its own: one that retried for minutes would hit this generous deadline.
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch", "backfill", "x/y", "--from", "2026-11-01", "--to", "2026-11-02"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Prefect API at http://127.0.0.1:1/api" in err[0]


# ---- against a Prefect server and a process worker


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def runs_of(dep_id) -> list:
    from prefect.client.schemas import filters as f
    from prefect.client.schemas.sorting import FlowRunSort

    with client() as c:
        by_dep = f.FlowRunFilter(deployment_id=f.FlowRunFilterDeploymentId(any_=[dep_id]))
        return c.read_flow_runs(flow_run_filter=by_dep, sort=FlowRunSort.EXPECTED_START_TIME_ASC)


@pytest.fixture(scope="module")
def deployed(prefect_api, tmp_path_factory):
    """A `schedule add` deployment of a workflow that appends its logical_date to a file and fails
    when `<marker>.fail-<logical_date>` exists; a completed run the scheduler made on 2025-04-05."""
    from prefect.states import Completed, Scheduled

    tmp = tmp_path_factory.mktemp("backfill")
    marker = tmp / "ticks.txt"
    wf = tmp / "stamp.yaml"
    wf.write_text(
        "name: stamp\nparameters:\n  - name: marker\n    required: true\nsteps:\n  - name: stamp\n"
        "    command: echo {{ .logical_date }} >> {{ .marker }} && test ! -e {{ .marker }}.fail-{{ .logical_date }}\n"
    )
    name, pool = f"stamp-{RUN}", f"backfill-{RUN}"
    with pytest.raises(SystemExit) as added:  # no -q: its PREFECT_LOGGING_LEVEL would outlive the module
        main(["schedule", "add", str(wf), "--cron", "0 2 * * *", "--timezone", "Europe/Paris",
              "--set", f"marker={marker}", "--name", name, "--pool", pool])  # fmt: skip
    assert added.value.code == 0
    with client() as c:
        dep = c.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        tick = datetime(2025, 4, 5, 2, tzinfo=PARIS)
        made = c.create_flow_run_from_deployment(
            dep.id, state=Scheduled(scheduled_time=tick), tags=["auto-scheduled"]
        )
        c.set_flow_run_state(made.id, Completed(), force=True)  # before a worker could take it
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_WORKER_QUERY_SECONDS="1")
    log = tmp / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--name", f"w-{RUN}"],
            env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield SimpleNamespace(
            name=f"{FLOW_NAME}/{name}", short=name, dep=dep, marker=marker, log=log, made=made
        )
    finally:  # a worker needs a second SIGINT to stop: end its whole group instead
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def backfill(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli(*args, "--json")
    return code, json.loads(capsys.readouterr().out)


def test_backfill_runs_each_tick_once_with_its_tick_on_a_real_worker(deployed, capsys):
    window = ["--from", "2025-03-29", "--to", "2025-03-31"]  # Paris changes to summer time on the 30th
    expected = ["2025-03-29T02:00:00+01:00", "2025-03-30T03:00:00+02:00", "2025-03-31T02:00:00+02:00"]

    code, doc = backfill(capsys, deployed.short, *window, "--dry-run")  # a bare name is enough
    assert code == 10 and doc["deployment"] == deployed.name and doc["timezone"] == "Europe/Paris"
    assert [(t["tick"], t["action"]) for t in doc["ticks"]] == [(t, "run") for t in expected]
    assert doc["from"] == "2025-03-29T00:00:00+01:00" and doc["to"] == "2025-03-31T23:59:59.999999+02:00"
    assert [r.id for r in runs_of(deployed.dep.id)] == [deployed.made.id]  # --dry-run made nothing

    failing = Path(f"{deployed.marker}.fail-{expected[1]}")
    failing.touch()
    code, doc = backfill(capsys, deployed.name, *window)
    assert code == 1, (doc, deployed.log.read_text()[-3000:])
    assert [t["state"] for t in doc["ticks"]] == ["Completed", "Failed", "Completed"]
    runs = [r for r in runs_of(deployed.dep.id) if r.id != deployed.made.id]
    assert [r.expected_start_time for r in runs] == [datetime.fromisoformat(t) for t in expected]
    assert [r.name for r in runs] == ["backfill-2025-03-29T02:00", "backfill-2025-03-30T03:00", "backfill-2025-03-31T02:00"]  # fmt: skip
    assert all("backfill" in r.tags for r in runs)
    assert [r.parameters["logical_date"] for r in runs] == expected
    assert deployed.marker.read_text().split() == expected  # the flow received its tick
    spans = sorted((r.start_time, r.end_time) for r in runs)
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False))  # one at a time

    failing.unlink()  # only the failed tick runs again
    code, doc = backfill(capsys, deployed.name, *window)
    assert code == 0, doc
    assert [(t["action"], t["state"]) for t in doc["ticks"]] == [
        ("skip", "Completed"), ("rerun", "Completed"), ("skip", "Completed"),
    ]  # fmt: skip
    assert doc["ticks"][0]["reason"] == "completed by backfill-2025-03-29T02:00"
    assert len(runs_of(deployed.dep.id)) == 5 and deployed.marker.read_text().split()[-1] == expected[1]

    capsys.readouterr()
    assert cli(deployed.name, *window) == 0  # all done: nothing new
    out, err = capsys.readouterr()
    assert len(runs_of(deployed.dep.id)) == 5 and "created" not in err
    assert out.splitlines()[0].split() == ["tick", "action", "state", "run"]
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["skip"] * 3


def test_a_run_the_scheduler_completed_counts_and_to_is_inclusive(deployed, capsys):
    code, doc = backfill(
        capsys, deployed.name, "--from", "2025-04-04", "--to", "2025-04-05T02:00", "--dry-run"
    )
    assert code == 10
    assert [(t["tick"], t["action"], t["run_name"]) for t in doc["ticks"]] == [
        ("2025-04-04T02:00:00+02:00", "run", None),
        ("2025-04-05T02:00:00+02:00", "skip", deployed.made.name),
    ]


def test_too_many_ticks_exit_3_and_max_ticks_raises_the_limit(deployed, capsys):
    count = len(runs_of(deployed.dep.id))
    assert cli(deployed.name, "--from", "2020-01-01", "--to", "2024-12-31", "--dry-run") == 3
    assert "more than 1000 ticks of `0 2 * * *`" in capsys.readouterr().err
    code, doc = backfill(capsys, deployed.name, "--from", "2020-01-01", "--to", "2024-12-31", "--dry-run", "--max-ticks", "2000")  # fmt: skip
    assert code == 10 and len(doc["ticks"]) == 1827
    assert cli(deployed.name, "--from", "2025-04-02", "--to", "2025-04-01") == 3
    assert "--from 2025-04-02T00:00:00+02:00 is after --to" in capsys.readouterr().err
    assert len(runs_of(deployed.dep.id)) == count


def test_a_deployment_without_a_cron_schedule_exits_3(prefect_api, capsys):
    name = f"nocron-{RUN}"
    with pytest.raises(SystemExit):
        main(["schedule", "add", str(ROOT / "deployments/workflows/basic-deployment.yaml"), "--cron", "0 1 * * *", "--name", name, "-q"])  # fmt: skip
    with pytest.raises(SystemExit):
        main(["schedule", "cancel", name, "--keep-deployment", "-q"])
    capsys.readouterr()
    assert cli(name, "--from", "2025-01-01", "--to", "2025-01-02") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"deployment {FLOW_NAME}/{name} has no cron schedule" in err[0]


def test_no_wait_creates_up_to_max_concurrent_runs_and_timeout_leaves_them(prefect_api, capsys):
    name = f"idle-{RUN}"  # on a pool no worker serves: its runs stay Scheduled
    with pytest.raises(SystemExit):
        main(["schedule", "add", str(ROOT / "deployments/workflows/basic-deployment.yaml"), "--cron", "30 4 * * *", "--name", name, "--pool", f"idle-{RUN}", "-q"])  # fmt: skip
    window = ["--from", "2025-06-01", "--to", "2025-06-03"]
    code, doc = backfill(capsys, name, *window, "--no-wait", "--max-concurrent", "2")
    assert code == 0 and [t["action"] for t in doc["ticks"]] == ["run", "run", "run"]
    assert [t["state"] for t in doc["ticks"]] == ["Scheduled", "Scheduled", None]  # the third waits its turn
    with client() as c:
        dep = c.read_deployment_by_name(f"{FLOW_NAME}/{name}")
    assert len(runs_of(dep.id)) == 2
    capsys.readouterr()
    assert cli(name, *window, "--max-concurrent", "2", "--timeout", "1s") == 1  # two in flight: none created
    err = capsys.readouterr().err
    assert "--timeout 1.0s: 2 runs go on, 1 ticks not started" in err and "created" not in err, err
    assert len(runs_of(dep.id)) == 2 and all(r.state.is_scheduled() for r in runs_of(dep.id))
