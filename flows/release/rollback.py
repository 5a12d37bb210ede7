"""`release rollback`: send traffic back to the other color, which still serves the previous release.

The flow holds the target's release lock (flows/release/lock.py): while a deploy runs or
waits for approval, a rollback is refused (exit 2) instead of switching to the color that
deploy is preparing. It also refuses (exit 2) when the other color serves nothing, serves a
version that never went live in this environment (no `released` row in the release log: say,
what a killed deploy left there unapproved, or a version that failed its test), or is not
healthy: switching to it would put an unapproved release live or take the service down. Its
switches run as lock steps, so a rollback that lost its lock changes nothing. It leaves a
`release_log` row with outcome `rolled_back` (or `failed` when its check failed and traffic
went back).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.errors import DependencyError, OpsflowError
from flows.maintenance.record import finish, recorded
from flows.records.locks import LockLost
from flows.release import instances
from flows.release.flow import _record_start, _record_update, switch_traffic, verify_live
from flows.release.lock import environment_lock, lost
from flows.release.target import Target, check_environment, other, release_root


@flow(name="release-rollback", log_prints=True)
def rollback_release(
    environment: str = "staging",
    root: str | None = None,
    blue_port: int = 8081,
    green_port: int = 8082,
    router_port: int = 8080,
    reason: str = "",
) -> dict[str, Any]:
    """Switch `environment`'s traffic back to the color not live now, after checking its health."""
    from prefect.runtime import flow_run

    root_path = release_root(root, check_environment(environment))
    target, ports = Target(root_path), {"blue": blue_port, "green": green_port}
    params = {"environment": environment, "root": str(root_path), "reason": reason}
    warn = get_run_logger().warning
    with (
        recorded("release-rollback", params, environment) as outcome,
        environment_lock(environment, root_path, "release rollback", warn) as lock,
    ):
        live = target.live()
        if live is None:
            raise DependencyError(f"nothing to roll back in {root_path}: no release is live")
        back, version = other(live), target.version(other(live))
        if version is None:
            raise DependencyError(f"{back} serves no release in {root_path}: nothing to roll back to")
        if not _went_live(environment, version):
            raise DependencyError(
                f"{back} serves {version}, which never went live in {environment} (no release of it in "
                f"the release log): not switching to it — release it with `release deploy {version}`"
            )
        status, doc = instances.probe(instances.health_url(ports[back]))
        if status != 200 or doc.get("version") != version:
            raise DependencyError(
                f"{back} ({version}) is not healthy on :{ports[back]} ({status or doc.get('error')}): not switching to it"
            )
        record = _record_start(environment, version, str(flow_run.id))
        _record_update(record, previous_version=target.version(live), color=back)
        try:
            with lock.step(warn):
                instances.ensure_router(root_path, router_port, ports)
                switch_traffic(root_path, back)
            try:
                verify_live(router_port, version)
            except OpsflowError as exc:
                with lock.step(warn):
                    switch_traffic(root_path, live)
                _record_update(record, outcome="failed", reason=str(exc), done=True)
                raise DependencyError(
                    f"rollback to {back} ({version}) failed its check, {live} is live again: {exc}"
                ) from None
        except LockLost as exc:
            _record_update(record, outcome="aborted", reason=lost(environment, exc), done=True)
            raise DependencyError(lost(environment, exc)) from None
        _record_update(record, outcome="rolled_back", reason=reason or None, done=True)
        outcome.message = (
            f"{environment}: rolled back to {version} on {back}; {live} keeps {target.version(live)}"
        )
        outcome.details = {"live": back, "live_version": version, "previous": target.version(live)}
    return finish(outcome)


def _went_live(environment: str, version: str) -> bool:
    from flows.records.db import session
    from flows.records.procedures import went_live

    with session() as db:
        return went_live(db, environment, version)
