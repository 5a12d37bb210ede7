"""The release target without Prefect: links, installs, the service processes and the router."""

from __future__ import annotations

import os
import urllib.request

import pytest

from flows.errors import DependencyError, ValidationError
from flows.release import instances
from flows.release.cli import ports_of
from flows.release.flow import needs_approval
from flows.release.target import Target, check_environment, check_version, other, release_root


@pytest.mark.parametrize("bad", ["", "../x", "1.0/../../etc", "-rf", "a b", "v1;rm", "x" * 65])
def test_hostile_versions_are_refused(bad):
    with pytest.raises(ValidationError, match="release version"):
        check_version(bad)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "production/",
        "./production",
        "/srv/production",
        "../production",
        "Production",
        "a b",
        "-x",
        "x" * 64,
    ],
)
def test_environment_names_are_plain_names(bad):
    with pytest.raises(ValidationError, match="environment name"):
        check_environment(bad)
    with pytest.raises(ValidationError, match="environment name"):
        needs_approval("auto", bad)


def test_a_directory_serves_one_environment_whatever_leads_to_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSFLOW_RELEASE_ROOT", str(tmp_path / "releases"))
    production = Target(release_root(None, "production"))
    assert production.owner() == "production"  # its default directory, before any release
    with pytest.raises(ValidationError, match="is the target of production, not of staging"):
        production.check_owner("staging")

    custom = Target(tmp_path / "srv")
    assert custom.owner() is None
    custom.check_owner("staging")
    custom.claim("staging")
    custom.claim("qa")  # the first environment keeps it
    assert custom.owner() == "staging" and (custom.root / "ENVIRONMENT").read_text() == "staging\n"
    with pytest.raises(ValidationError, match="is the target of staging, not of production"):
        custom.check_owner("production")
    (tmp_path / "alias").symlink_to(custom.root)
    assert release_root(str(tmp_path / "alias"), "production") == custom.root
    (tmp_path / "releases").mkdir()
    (tmp_path / "releases" / "qa").symlink_to(custom.root)
    assert release_root(None, "qa") == custom.root  # one directory, one name


def test_first_release_goes_to_blue_then_colors_alternate(tmp_path, app):
    target = Target(tmp_path / "t")
    assert target.live() is None and target.idle() == "blue"
    path, new = target.install(app, "1.0")
    assert new and (path / "VERSION").read_text() == "1.0\n" and (path / "index.html").is_file()
    assert target.point("blue", "releases/1.0") is None
    target.point("current", "blue")
    assert (target.live(), target.idle(), target.version("blue")) == ("blue", "green", "1.0")
    assert target.point("current", "green") == "blue" and other("green") == "blue"
    assert os.readlink(target.link("current")) == "green"
    assert not list(target.root.glob(".*tmp")), "no temporary link is left behind"


def test_a_version_is_installed_once_and_never_overwritten(tmp_path, app):
    target = Target(tmp_path / "t")
    target.install(app, "1.0")
    (app / "index.html").write_text("changed")
    path, new = target.install(app, "1.0")
    assert not new and (path / "index.html").read_text() == "<h1>sample</h1>\n"
    assert target.releases() == ["1.0"]
    with pytest.raises(ValidationError, match="not a directory"):
        target.install(tmp_path / "missing", "2.0")


def test_root_per_environment_and_ports_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSFLOW_RELEASE_ROOT", str(tmp_path))
    assert release_root(None, "production") == tmp_path / "production"
    assert release_root(str(tmp_path / "x"), "production") == tmp_path / "x"
    assert ports_of(tmp_path, None, None, None) == {"router": 8080, "blue": 8081, "green": 8082}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "router.json").write_text('{"port": 9000, "blue": 9001, "green": 9002}')
    assert ports_of(tmp_path, None, 9005, None) == {"router": 9000, "blue": 9001, "green": 9005}


def test_approval_is_asked_in_production_unless_told_otherwise():
    assert needs_approval("auto", "production") and not needs_approval("auto", "staging")
    assert needs_approval("required", "staging") and not needs_approval("never", "production")
    with pytest.raises(ValidationError):
        needs_approval("maybe", "staging")


def test_instances_serve_their_release_and_the_router_follows_current(target_root, ports, app):
    target = Target(target_root)
    for color, version in (("blue", "1.0"), ("green", "2.0")):
        target.install(app, version)
        target.point(color, f"releases/{version}")
        instances.start_instance(target_root, color, ports[f"{color}_port"])
    router = instances.health_url(ports["router_port"])
    instances.ensure_router(
        target_root, ports["router_port"], {"blue": ports["blue_port"], "green": ports["green_port"]}
    )
    assert instances.probe(router) == (503, {"status": "no live color", "root": str(target_root.resolve())})
    target.point("current", "blue")
    assert instances.probe(router) == (200, {"status": "ok", "version": "1.0", "color": "blue"})
    target.point("current", "green")
    assert instances.probe(router)[1]["version"] == "2.0"
    page = f"http://127.0.0.1:{ports['router_port']}/index.html"
    with urllib.request.urlopen(page, timeout=60) as response:
        assert response.headers["X-Opsflow-Color"] == "green" and b"sample" in response.read()
    (target.release_dir("2.0") / "HEALTH").write_text("fail\n")
    assert instances.probe(router)[0] == 503
    assert not instances.ensure_router(
        target_root, ports["router_port"], {"blue": ports["blue_port"], "green": ports["green_port"]}
    )
    assert instances.stop(target_root, "green") and instances.running_pid(target_root, "green") is None
    assert instances.probe(router)[0] == 502
    assert not instances.stop(target_root, "green")


def test_an_instance_that_cannot_start_is_a_dependency_error(target_root, ports):
    with pytest.raises(DependencyError, match="exited with 3 at start: .*no release to serve"):
        instances.start_instance(target_root, "blue", ports["blue_port"])


def test_a_stale_pid_file_is_never_signalled(target_root):
    (target_root / "run").mkdir(parents=True)
    (target_root / "run" / "blue.pid").write_text(f"{os.getpid()}\n")  # this test process: not our service
    assert instances.running_pid(target_root, "blue") is None
    assert not instances.stop(target_root, "blue")
