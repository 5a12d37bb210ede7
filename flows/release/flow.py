"""The release flow (seeds 001 and 004): blue-green per environment, approval, automatic rollback.

    prepare  the live color keeps serving; the other (idle) color gets the release
    deploy   install releases/<version>, point the idle link at it, restart the idle instance
    test     the idle instance answers /health with the new version (retried)
    approve  in production (or with approval="required"): the run pauses for a decision
             (flows/approval.py); a rejection or no decision in time rolls back
    switch   `current` -> idle color: the router now sends traffic there
    verify   /health through the router shows the new version (retried); else switch back
The old color keeps running unchanged, so `release rollback` is one more switch. A failed,
rejected or timed-out release puts `current` back to the color live before it, whoever moved
it meanwhile, and only then stops or restores the idle color. The target's release lock
(flows/release/lock.py) is held from the live check to the end, so no rollback, stop or other
deploy runs in between (they are refused, exit 2); each step that changes traffic or a color
first confirms the lock is still this run's, and a run that lost it (taken over after its
lease, say while its machine was stopped) changes nothing more: not even a rollback, which
is now the new holder's to decide. Every attempt leaves a `release_log` row (outcomes in
flows/records/procedures.py) and a `script_execution_log` row; the run ends Failed when the
release did not go live, so the UI, `trigger --wait` and the terminal agree.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.approval import approval_timeout as approval_seconds
from flows.approval import request_approval
from flows.errors import DependencyError, OpsflowError, ValidationError
from flows.maintenance.record import finish, recorded
from flows.records.locks import LockLost
from flows.release import instances
from flows.release.lock import environment_lock, lost
from flows.release.target import COLORS, PRODUCTION, Target, check_environment, check_version, release_root
from flows.workflow.notifications import RunNotifier

HEALTH_RETRIES = [1, 2, 4]  # seconds between health probes: a fresh instance may still warm up
EVENTS = ["started", "completed", "failed", "requires_approval", "rolled_back"]


class ReleaseFailed(OpsflowError):
    """A release step failed; the release was rolled back."""


def needs_approval(approval: str, environment: str) -> bool:
    """Whether the switch waits for a decision. `auto` asks in production only: an environment is
    a plain name and a target directory serves one environment (target.py), so production's
    directory is never reached under another name, nor production's name with a variant."""
    if approval not in ("auto", "required", "never"):
        raise ValidationError(f"approval must be auto, required or never, not {approval!r}")
    return approval == "required" or (approval == "auto" and check_environment(environment) == PRODUCTION)


def healthy_version(url: str, version: str) -> dict[str, Any]:
    """The health document at `url` when it is 200 and shows `version`; else ReleaseFailed."""
    status, doc = instances.probe(url)
    if status != 200 or doc.get("version") != version:
        seen = f"HTTP {status}" if status else doc.get("error", "no answer")
        raise ReleaseFailed(f"{url}: expected healthy {version}, got {seen} {doc.get('version', '')}".strip())
    return doc


@task(name="release-check-live", cache_policy=NO_CACHE, persist_result=False)
def check_live(root: Path, router_port: int, ports: dict[str, int]) -> dict[str, Any]:
    """Before anything changes: which color is live, on what version, and is it healthy."""
    target = Target(root)
    instances.ensure_router(root, router_port, ports)
    state = target.status()
    state["idle"] = target.idle()
    state["idle_previous"] = (
        os.readlink(target.link(state["idle"])) if target.version(state["idle"]) else None
    )
    if state["live"]:
        status, doc = instances.probe(instances.health_url(router_port))
        state["live_health"] = status
        if status != 200:
            get_run_logger().warning(
                f"live color {state['live']} is not healthy before the release: {status} {doc}"
            )
    return state


@task(name="release-deploy", cache_policy=NO_CACHE, persist_result=False)
def deploy_idle(root: Path, color: str, port: int, source: Path, version: str) -> dict[str, Any]:
    target = Target(root)
    path, new = target.install(source, version)
    target.point(color, f"releases/{version}")
    pid = instances.start_instance(root, color, port)
    get_run_logger().info(
        f"{version} {'installed' if new else 'already installed'} at {path}; {color} (pid {pid}) serves it on :{port}"
    )
    return {"path": str(path), "installed": new, "pid": pid}


@task(
    name="release-test",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=len(HEALTH_RETRIES),
    retry_delay_seconds=HEALTH_RETRIES,
)
def test_color(port: int, version: str) -> dict[str, Any]:
    return healthy_version(instances.health_url(port), version)


@task(name="release-switch", cache_policy=NO_CACHE, persist_result=False)
def switch_traffic(root: Path, color: str) -> str | None:
    old = Target(root).point("current", color)
    get_run_logger().info(f"traffic switched: current -> {color} (was {old or 'nothing'})")
    return old


@task(
    name="release-verify",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=len(HEALTH_RETRIES),
    retry_delay_seconds=HEALTH_RETRIES,
)
def verify_live(router_port: int, version: str) -> dict[str, Any]:
    return healthy_version(instances.health_url(router_port), version)


def put_back_current(root: Path, state: dict[str, Any]) -> str | None:
    """`current` back to the color live before the release (none on a first release), whoever
    moved it and whether the release had switched or not; what was done, or None if nothing."""
    target = Target(root)
    if target.live() == state["live"] and (state["live"] or not target.link("current").is_symlink()):
        return None
    if state["live"]:
        target.point("current", state["live"])
        return f"traffic back on {state['live']} ({state['live_version']})"
    target.link("current").unlink(missing_ok=True)
    return "no traffic: this was the first release"


@task(name="release-rollback", cache_policy=NO_CACHE, persist_result=False)
def roll_back(root: Path, state: dict[str, Any], ports: dict[str, int], router_port: int) -> str:
    """Put back what was live before: `current` to the old color, the idle link to its old release.

    `current` is put back first, so the idle color is never what serves traffic when it is
    stopped or restarted below."""
    target, idle = Target(root), state["idle"]
    done = [line for line in [put_back_current(root, state)] if line]
    if state["idle_previous"]:
        target.point(idle, state["idle_previous"])
        instances.start_instance(root, idle, ports[idle])
        done.append(f"{idle} serves {target.version(idle)} again")
    else:
        instances.stop(root, idle)
        target.link(idle).unlink(missing_ok=True)
        done.append(f"{idle} stopped")
    if state["live"]:
        status, doc = instances.probe(instances.health_url(router_port))
        done.append(f"live health after rollback: {status} {doc.get('version', doc.get('error', ''))}")
    get_run_logger().warning("rolled back: " + "; ".join(done))
    return "; ".join(done)


@flow(name="release", log_prints=True)
def release(
    version: str,
    source: str = "deployments/releases/app",
    environment: str = "staging",
    root: str | None = None,
    blue_port: int = 8081,
    green_port: int = 8082,
    router_port: int = 8080,
    approval: Literal["auto", "required", "never"] = "auto",
    approval_timeout: str = "1h",
    notify: list[str] | None = None,
) -> dict[str, Any]:
    """Release `version` (the files under `source`) blue-green into `environment`.

    Approval is asked in production (`auto`), always (`required`) or never; `notify` names
    apprise channels (OPSFLOW_NOTIFY_<NAME>) for started/completed/failed/requires_approval/
    rolled_back. Ports: the two colors' instances and the router that follows `current`.
    """
    from prefect.runtime import flow_run

    check_version(version)
    check_environment(environment)
    wait = approval_seconds(approval_timeout)
    must_approve = needs_approval(approval, environment)
    ports = {"blue": blue_port, "green": green_port}
    if len({blue_port, green_port, router_port}) != 3:
        raise ValidationError("blue_port, green_port and router_port must differ")
    root_path, src = release_root(root, environment), Path(source).expanduser().resolve()
    if not src.is_dir():
        raise ValidationError(f"release source {source}: not a directory")
    logger, run_id, started = get_run_logger(), str(flow_run.id), time.monotonic()
    notifier = RunNotifier(
        SimpleNamespace(channels=notify or [], events=EVENTS),
        f"release {version}",
        environment,
        run_id,
        logger,
    )
    params = {
        "version": version,
        "source": str(src),
        "environment": environment,
        "root": str(root_path),
        "approval": approval,
    }
    with (
        recorded("release", params, environment) as outcome,
        environment_lock(environment, root_path, f"release deploy {version}", logger.warning) as lock,
    ):
        record = _record_start(environment, version, run_id)
        notifier.emit("started")
        try:
            with lock.step(logger.warning):
                Target(root_path).claim(environment)
                state = check_live(root_path, router_port, ports)
        except LockLost as exc:
            _record_update(record, outcome="aborted", reason=lost(environment, exc), done=True)
            raise DependencyError(lost(environment, exc)) from None
        except Exception as exc:
            _record_update(record, outcome="failed", reason=_reason(exc), done=True)
            raise
        idle, decision = state["idle"], None
        _record_update(record, previous_version=state["live_version"], color=idle)
        try:
            with lock.step(logger.warning):
                deploy_idle(root_path, idle, ports[idle], src, version)
            test_color(ports[idle], version)
            if must_approve:
                what = f"switch {environment} traffic to {idle} ({version}, live: {state['live_version'] or 'none'})"
                lock.set_waiting("approval")  # so a refused operation is told how to decide it
                try:
                    decision = request_approval(
                        what,
                        timeout=wait,
                        key=f"release-{version}",
                        announce=lambda line: notifier.emit("requires_approval", detail=line),
                    )
                finally:
                    lock.set_waiting(None)
                if not decision.approved:
                    raise ReleaseFailed(f"approval {decision.describe()}")
            with lock.step(logger.warning):
                switch_traffic(root_path, idle)
            verify_live(router_port, version)
        except Exception as exc:
            reason, taken = _reason(exc), exc if isinstance(exc, LockLost) else None
            if taken is None:
                try:
                    with lock.step(logger.warning):
                        undone = roll_back(root_path, state, ports, router_port)
                except LockLost as again:
                    taken = again
            outcome.details = {
                "live": state["live"],
                "live_version": state["live_version"],
                "attempted": idle,
            }
            approver = decision.approver if decision else None
            if taken is not None:
                # Another operation holds the target now: what is live is its to decide.
                line = lost(environment, taken)
                outcome.fail(f"{line}; {version} not released", taken.exit_code)
                _record_update(record, outcome="aborted", reason=line, approved_by=approver, done=True)
                notifier.emit("failed", duration=time.monotonic() - started, failed=[line])
            else:
                kind = "rejected" if decision is not None and not decision.approved else "failed"
                outcome.fail(f"{environment}: {version} not released, rolled back ({reason}); {undone}")
                _record_update(record, outcome=kind, reason=reason, approved_by=approver, done=True)
                notifier.emit(
                    "rolled_back", duration=time.monotonic() - started, failed=[reason], detail=undone
                )
        except BaseException:
            # Cancelled or interrupted: no task runs any more, but traffic still goes back
            # (if the lock is still this run's), and the record says the release was aborted.
            with contextlib.suppress(Exception), lock.step(logger.warning):
                put_back_current(root_path, state)
            with contextlib.suppress(Exception):
                _record_update(record, outcome="aborted", reason="cancelled or interrupted", done=True)
            raise
        else:
            kept = f"; {state['live']} keeps {state['live_version']} for rollback" if state["live"] else ""
            outcome.message = f"{environment}: {version} is live on {idle} (:{router_port}){kept}"
            outcome.details = {"live": idle, "live_version": version, "previous": state["live_version"]}
            _record_update(
                record,
                outcome="released",
                approved_by=decision.approver if decision else None,
                reason=decision.reason if decision else None,
                done=True,
            )
            notifier.emit("completed", duration=time.monotonic() - started, detail=outcome.message)
    target = Target(root_path)
    live = target.live()
    colors = [
        {"color": c, "version": target.version(c) or "-", "live": "yes" if live == c else ""} for c in COLORS
    ]
    return finish(outcome, table=colors)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, OpsflowError) else f"{type(exc).__name__}: {exc}"


def _record_start(environment: str, version: str, run_id: str) -> int:
    from flows.records.db import session
    from flows.records.liveness import this_process
    from flows.records.procedures import ReleaseRecord

    with session() as db:
        row = ReleaseRecord(environment=environment, version=version, flow_run_id=run_id, **this_process())
        db.add(row)
        db.flush()
        return row.id


def _record_update(record_id: int, *, done: bool = False, **fields: Any) -> None:
    from flows.records.db import session
    from flows.records.models import utcnow
    from flows.records.procedures import ReleaseRecord

    with session() as db:
        row = db.get(ReleaseRecord, record_id)
        for key, value in fields.items():
            setattr(row, key, value)
        if done:
            row.ended_at = utcnow()
        db.add(row)
