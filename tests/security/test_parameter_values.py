"""A value from outside given with `--param` stays one value: it cannot add or change other
parameters, as `--set`'s comma splitting would let it (`--set 'msg=hi,target=/etc'`)."""

from __future__ import annotations

import json

import pytest

from flows.batch import main

WORKFLOW = """\
name: smuggling
parameters:
  - name: msg
    type: string
  - name: target
    type: string
    default: safe
steps:
  - name: show
    command: echo {{ .msg }} {{ .target }}
"""


@pytest.fixture
def workflow(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(WORKFLOW)
    return path


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


def planned(capsys, *args: str) -> str:
    capsys.readouterr()
    assert cli("plan", *args, "--json") == 0
    return json.loads(capsys.readouterr().out)["steps"][0]["text"]


def test_set_splits_at_a_following_key(workflow, capsys):
    # What --set is for: several pairs in one option. A hostile value can use it.
    assert planned(capsys, str(workflow), "--set", "msg=hi,target=/etc") == "echo hi /etc"


def test_param_keeps_the_whole_value_and_the_other_parameters(workflow, capsys):
    command = planned(capsys, str(workflow), "--param", "msg=hi,target=/etc")
    assert command == "echo hi,target=/etc safe"


def test_param_value_may_hold_equals_signs_and_brackets(workflow, capsys):
    assert planned(capsys, str(workflow), "--param", "msg=a=b,[c]") == "echo 'a=b,[c]' safe"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_param_is_taken_where_set_is(workflow, capsys, command):
    args = [command, str(workflow), "--param", "msg=x,target=/etc"]
    assert cli(*args, "--dry-run") == 10 if command == "run" else cli(*args) == 0


@pytest.mark.parametrize("bad", ["novalue", "1x=3", "=v"])
def test_param_without_a_key_is_exit_3_without_the_value(workflow, capsys, bad):
    assert cli("plan", str(workflow), "--param", bad) == 3
    err = capsys.readouterr().err
    assert "--param expects one key=value" in err
    assert "novalue" not in err


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("mgs=hi", "unknown parameter `mgs` — did you mean `msg`?"),
        ("workflow_id=x", "`workflow_id` is set by opsflow"),
    ],
)
def test_validate_refuses_the_names_plan_refuses(workflow, capsys, given, message):
    for command in ("validate", "plan"):
        capsys.readouterr()
        assert cli(command, str(workflow), "--set", given) == 3
        assert message in capsys.readouterr().err
