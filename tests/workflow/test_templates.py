"""Workflow templates: `templates`, `create`, `template generate`, and runs of created files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.batch import main
from flows.settings import get_settings
from flows.workflow.check import analyse
from flows.workflow.load import load_workflow
from flows.workflow.params import bind
from flows.workflow.scaffold import BUILTIN_DIR, available_templates, create_workflow, find_template

from ..conftest import ROOT, SAMPLES

BUILTINS = ["deployment", "blue-green", "maintenance", "file-batch"]
HOSTILE = 'it\'s "quoted"\nname: injected\n{{ .workdir }} {{ end }}\n: colon: value # not a comment\n- item'


@pytest.fixture(autouse=True)
def user_templates(tmp_path, monkeypatch):
    """User templates and created workflows go to this test's own directories."""
    folder = tmp_path / "templates"
    monkeypatch.setenv("OPSFLOW_TEMPLATES_DIR", str(folder))
    monkeypatch.setenv("OPSFLOW_WORKFLOWS_DIR", str(tmp_path / "workflows"))
    get_settings.cache_clear()
    yield folder
    get_settings.cache_clear()


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


def created(tmp_path: Path, template: str, name: str = "made", **values: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(create_workflow(find_template(template), name, values))
    return path


def defaults(path: Path) -> dict:
    return {p.name: p.default for p in load_workflow(path).spec.parameters}


@pytest.mark.parametrize("template", BUILTINS)
def test_every_builtin_creates_a_valid_workflow(tmp_path, template):
    path = created(tmp_path, template, name=f"my-{template}")
    loaded = load_workflow(path)
    analysis = analyse(loaded)
    assert loaded.spec.name == f"my-{template}"
    assert analysis.warnings == []
    bind(loaded, {}, environment=None, default_environment="staging", workflow_id="w")
    assert "template" not in yaml.safe_load(path.read_text())


def test_templates_lists_builtins_with_parameters(capsys):
    assert cli("templates", "--json") == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    assert set(BUILTINS) <= set(listed)
    deployment = listed["deployment"]
    assert deployment["builtin"] and deployment["description"]
    assert {p["name"] for p in deployment["parameters"]} >= {"services", "image_tag", "environment"}
    assert cli("templates") == 0
    out = capsys.readouterr().out
    assert "--set services=api,worker" in out


def test_cli_create_writes_a_file_that_validate_accepts(tmp_path):
    env = os.environ | {"OPSFLOW_WORKFLOWS_DIR": str(tmp_path / "wf")}
    run = [sys.executable, "-m", "flows.batch"]
    made = subprocess.run(
        [*run, "create", "svc-release", "--template", "deployment", "--set", "services=api,web"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    path = tmp_path / "wf" / "svc-release.yaml"
    checked = subprocess.run([*run, "validate", str(path)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "ok" in checked.stdout and "svc-release" in checked.stdout


def test_set_values_become_defaults(tmp_path):
    path = tmp_path / "out" / "release.yaml"
    code = cli(
        "create",
        "release",
        "-t",
        "deployment",
        "--set",
        "services=api,web",
        "-s",
        "image_tag=v9.1.0",
        "-o",
        str(path),
    )
    assert code == 0
    assert defaults(path)["services"] == ["api", "web"]
    assert defaults(path)["image_tag"] == "v9.1.0"
    assert defaults(created(tmp_path, "maintenance", keep_backups="5"))["keep_backups"] == 5


def test_hostile_values_stay_values(tmp_path):
    template = find_template("deployment")
    path = created(tmp_path, "deployment", message=HOSTILE, workdir="/tmp/x: y\n  z: {a}")
    data = yaml.safe_load(path.read_text())
    assert list(data) == [k for k in template.workflow if k != "template"]
    assert data["name"] == "made"
    assert defaults(path)["message"] == HOSTILE
    assert defaults(path)["workdir"] == "/tmp/x: y\n  z: {a}"
    assert analyse(load_workflow(path)).warnings == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "nope"], "templates: blue-green, deployment, file-batch, maintenance"),
        (["-t", "deployment", "--set", "imagetag=v1"], "parameters: environment, services, image_tag"),
        (["-t", "deployment", "--set", "image_tag=bad tag!"], "does not match"),
        (["-t", "maintenance", "--set", "keep_backups=many"], "must be an int"),
    ],
    ids=["unknown-template", "unknown-key", "invalid-value", "wrong-type"],
)
def test_bad_template_or_value_is_exit_3(tmp_path, capsys, args, message):
    path = tmp_path / "never.yaml"
    assert cli("create", "x", *args, "-o", str(path)) == 3
    assert message in capsys.readouterr().err
    assert not path.exists()


def test_template_metadata_cannot_inject_keys(tmp_path, user_templates):
    data = yaml.safe_load((BUILTIN_DIR / "maintenance.yaml").read_text())
    data["template"] = {"name": "mine", "description": "x\nrollback:\n  steps: [{command: touch pwned}]"}
    user_templates.mkdir()
    (user_templates / "mine.yaml").write_text(yaml.safe_dump(data))
    path = created(tmp_path, "mine")
    assert load_workflow(path).spec.rollback is None
    assert "mine" in available_templates()


def test_a_broken_user_template_is_reported_not_fatal(tmp_path, user_templates, capsys):
    user_templates.mkdir()
    broken = user_templates / "broken.yaml"
    broken.write_text("template:\n  name: broken\n\nname: b\nsteps:\n  - comand: x\n")
    assert cli("templates") == 0
    captured = capsys.readouterr()
    assert "deployment" in captured.out and f"{broken}:6: unknown key `comand`" in captured.err
    assert cli("create", "x", "-t", "broken", "-o", str(tmp_path / "x.yaml")) == 3
    assert "left out, not loading" in capsys.readouterr().err


def test_existing_file_is_kept_without_force(tmp_path, capsys):
    path = tmp_path / "wf.yaml"
    path.write_text("mine\n")
    assert cli("create", "x", "-t", "maintenance", "-o", str(path)) == 3
    assert "already exists — give --force" in capsys.readouterr().err
    assert path.read_text() == "mine\n"
    assert cli("create", "x", "-t", "maintenance", "-o", str(path), "--force") == 0
    assert load_workflow(path).spec.name == "x"


def test_only_regular_files_are_replaced(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert cli("create", "x", "-t", "maintenance", "-o", str(folder), "--force") == 3
    assert "not a regular file" in capsys.readouterr().err
    assert folder.is_dir() and not list(folder.iterdir())


def test_default_output_is_the_workflows_dir(tmp_path):
    assert cli("create", "nightly", "-t", "maintenance") == 0
    assert load_workflow(tmp_path / "workflows" / "nightly.yaml").spec.name == "nightly"


def test_generate_then_create_round_trip(tmp_path, user_templates, capsys):
    source = SAMPLES / "basic-deployment.yaml"
    code = cli(
        "template",
        "generate",
        "--from",
        str(source),
        "--name",
        "team-deploy",
        "--param",
        "services",
        "--param",
        "image_tag=v3.0.0",
        "--param",
        "min_free_kib=10240",
    )
    assert code == 0, capsys.readouterr().err
    data = yaml.safe_load((user_templates / "team-deploy.yaml").read_text())
    assert data["template"]["name"] == "team-deploy"
    check = data["steps"][0]["command"]
    assert '[ "$free_kib" -gt {{ .min_free_kib }} ]' in check and "10240" not in check
    template = find_template("team-deploy")
    assert template.settable == ("services", "image_tag", "min_free_kib")
    assert "team-deploy" in available_templates()

    path = tmp_path / "made.yaml"
    assert (
        cli(
            "create",
            "made",
            "-t",
            "team-deploy",
            "-s",
            "services=api,worker",
            "-s",
            "min_free_kib=20480",
            "-o",
            str(path),
        )
        == 0
    )
    assert analyse(load_workflow(path)).warnings == []
    assert defaults(path) | {"workdir": None} == {
        "environment": "staging",
        "image_tag": "v3.0.0",
        "services": ["api", "worker"],
        "workdir": None,
        "min_free_kib": 20480,
    }
    # Parameters the template does not expose cannot be set.
    assert (
        cli("create", "other", "-t", "team-deploy", "-s", "environment=prod", "-o", str(tmp_path / "o.yaml"))
        == 3
    )
    # The generated template is itself found by file path.
    assert (
        cli("create", "again", "-t", str(user_templates / "team-deploy.yaml"), "-o", str(tmp_path / "a.yaml"))
        == 0
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "../escape"], "letters, digits"),
        (["--param", "nope"], "is not a parameter"),
        (["--param", "tag=v-never-there"], "does not occur"),
        (["--param", "bad key"], "KEY or KEY=VALUE"),
    ],
)
def test_generate_refuses_what_it_cannot_do(capsys, args, message):
    command = ["template", "generate", "--from", str(SAMPLES / "basic-deployment.yaml"), "--name", "t"]
    assert cli(*command, *args) == 3
    assert message in capsys.readouterr().err


def test_generate_refuses_a_builtin_name(capsys):
    args = ["template", "generate", "--from", str(SAMPLES / "basic-deployment.yaml"), "--name", "deployment"]
    assert cli(*args) == 3
    assert "built-in" in capsys.readouterr().err


RUNS = {
    "deployment": lambda d: {"workdir": str(d), "message": HOSTILE, "services": "api,web"},
    "blue-green": lambda d: {"workdir": str(d)},
    "maintenance": lambda d: {
        "data_dir": str(d / "data"),
        "backup_dir": str(d / "backups"),
        "keep_backups": "1",
    },
    "file-batch": lambda d: {"inbox": str(d / "in"), "outbox": str(d / "out"), "pattern": "*.csv"},
}


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("template", BUILTINS)
def test_created_workflows_run(tmp_path, template):
    from flows.workflow.run import run_workflow

    work = tmp_path / "work"
    values = {k: str(v) for k, v in RUNS[template](work).items()}
    path = created(tmp_path, template, name=f"run-{template}", **values)
    for _ in range(2):  # twice: the second run starts from the first one's leftovers
        state = run_workflow(path=str(path), return_state=True)
        summary = state.result(raise_on_failure=False)
        assert state.is_completed(), summary
        assert {s["state"] for s in summary["steps"]} == {"Completed"}, summary
    if template == "deployment":
        manifest = json.loads((work / "staging" / "web" / "current" / "manifest.json").read_text())
        assert manifest["message"] == HOSTILE
    if template == "blue-green":
        assert (work / "staging" / "live").readlink() == Path("slots/green")  # blue, then green
    if template == "maintenance":
        assert len(list((work / "backups").glob("backup-*.tar.gz"))) == 1
    if template == "file-batch":
        assert sorted(p.name for p in (work / "out" / "processed").glob("*.gz")) == [
            "sample-1.csv.gz",
            "sample-2.csv.gz",
            "sample-3.csv.gz",
        ]
