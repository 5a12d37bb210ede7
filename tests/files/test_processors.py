"""Processors, discovery and single attempts: real files, real commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flows.errors import PermissionFailure, ValidationError
from flows.files.discover import iter_inputs
from flows.files.processors import CommandProcessor, parse_processor
from flows.files.work import attempt, fingerprint

from .conftest_helpers import wait_for

HOSTILE_NAMES = [
    "plain.txt",
    "with space.txt",
    "quote'd.txt",
    'dq"uote.txt',
    "-rf",
    "new\nline.txt",
    "$(touch PWNED).txt",
]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name in HOSTILE_NAMES:
        (root / name).write_text(f"content of {name}\n")
    (root / "sub" / "deep.txt").write_text("deep\n")
    return root


def test_discovery_streams_every_file_once_with_absolute_paths(tree):
    found = list(iter_inputs([str(tree), str(tree / "sub")]))
    names = sorted(f.relative.as_posix() for f in found)
    assert names == sorted([*HOSTILE_NAMES, "sub/deep.txt"])
    assert all(f.path.is_absolute() for f in found)
    assert [f.relative.as_posix() for f in iter_inputs([str(tree / "sub" / "*.txt")])] == ["deep.txt"]


def test_discovery_errors(tmp_path, tree):
    with pytest.raises(ValidationError, match="no file matches"):
        list(iter_inputs([str(tmp_path / "*.nothing")]))
    with pytest.raises(ValidationError, match="no such file"):
        list(iter_inputs([str(tmp_path / "missing")]))
    with pytest.raises(PermissionFailure, match="outside the allowed roots"):
        list(iter_inputs([str(tree)], allowed_roots=[str(tmp_path / "elsewhere")]))


@pytest.mark.parametrize("template", ["cp {input} {output}", "cat {input} | tr a-z A-Z > {output}"])
def test_command_processor_handles_hostile_names(tree, tmp_path, template):
    processor = parse_processor(template)
    out = tmp_path / "out"
    for file in iter_inputs([str(tree)]):
        outcome = attempt(file, processor, output_dir=out, timeout=10, print_="x")
        assert outcome.status == "completed", outcome.error
        assert Path(outcome.output_path).read_text().lower() == file.path.read_text().lower()
    assert not list(tmp_path.rglob("PWNED*"))
    assert not list(out.rglob(".opsflow-*"))


def test_command_without_shell_syntax_runs_without_a_shell():
    processor = CommandProcessor("gzip -c {input}")
    assert processor.argv_or_script(Path("/a b"), None) == ["gzip", "-c", "/a b"]
    assert isinstance(
        CommandProcessor("gzip -c {input} > {output}").argv_or_script(Path("/a"), Path("/b")), str
    )


def test_failed_attempt_leaves_no_output_and_says_why(tree, tmp_path):
    processor = parse_processor("sh -c 'echo partial > \"$1\"; echo boom >&2; exit 3' _ {output} {input}")
    file = next(iter_inputs([str(tree / "plain.txt")]))
    outcome = attempt(file, processor, output_dir=tmp_path / "out", timeout=10, print_="x")
    assert outcome.status == "failed" and "exit code 3" in outcome.error and "boom" in outcome.error
    assert not any((tmp_path / "out").iterdir())


def test_timeout_kills_a_hanging_processor(tree, tmp_path):
    from flows.processes import group_alive

    pid, finished = tmp_path / "pid", tmp_path / "finished"
    file = next(iter_inputs([str(tree / "plain.txt")]))
    processor = parse_processor(f"echo $$ > {pid}; sleep 30; touch {finished}; cat {{input}}")
    outcome = attempt(file, processor, output_dir=None, timeout=2, print_="x")
    assert outcome.status == "failed" and "timed out" in outcome.error
    assert not finished.exists()  # stopped at its timeout, not waited for
    wait_for(lambda: not group_alive(int(pid.read_text()), None), 60)  # `sleep` and all


def test_fingerprint_covers_bytes_processor_and_options(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    base = fingerprint(path, "p1", "{}")
    assert fingerprint(path, "p2", "{}") != base
    assert fingerprint(path, "p1", '{"x":1}') != base
    path.write_bytes(b"abd")
    assert fingerprint(path, "p1", "{}") != base


def test_python_callable_processor(tmp_path, monkeypatch):
    module = tmp_path / "myprocs.py"
    module.write_text(
        "def upper(src, dst):\n    dst.write_text(src.read_text().upper())\n    return 'uppercased'\n"
        "def broken(src, dst):\n    raise RuntimeError('no luck')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "a.txt"
    src.write_text("hi")
    file = next(iter_inputs([str(src)]))
    ok = attempt(file, parse_processor("myprocs:upper"), output_dir=tmp_path / "o", timeout=None, print_="x")
    assert ok.status == "completed" and ok.note == "uppercased"
    assert (tmp_path / "o" / "a.txt").read_text() == "HI"
    bad = attempt(
        file, parse_processor("myprocs:broken"), output_dir=tmp_path / "o2", timeout=None, print_="x"
    )
    assert bad.status == "failed" and bad.error == "RuntimeError: no luck"
    with pytest.raises(ValidationError, match="cannot import"):
        parse_processor("no_such_module_xyz:f")
    sys.modules.pop("myprocs", None)


SCHEMA = {
    "type": "object",
    "required": ["id", "email"],
    "properties": {"id": {"type": "integer"}, "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"}},
}


def test_records_processor(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    processor = parse_processor(f"records:{schema}")
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"id": 1, "email": "a@b"}, {"id": 2, "email": "c@d"}]))
    out = tmp_path / "out"
    outcome = attempt(next(iter_inputs([str(good)])), processor, output_dir=out, timeout=None, print_="x")
    assert outcome.status == "completed" and outcome.note == "2 records"
    assert [json.loads(line)["id"] for line in (out / "good.json.jsonl").read_text().splitlines()] == [1, 2]

    csv_file = tmp_path / "people.csv"
    csv_file.write_text("id,email\n1,a@b\n2,broken\n")
    processor_csv = parse_processor(f"records:{schema}")
    outcome = attempt(
        next(iter_inputs([str(csv_file)])), processor_csv, output_dir=out, timeout=None, print_="x"
    )
    # CSV cells are converted to the schema's types; record 2's email fails its pattern
    assert outcome.status == "failed" and "1 of 2 records invalid" in outcome.error
    report = [json.loads(line) for line in (out / "people.csv.jsonl.errors.jsonl").read_text().splitlines()]
    assert report == [{"record": 2, "field": "email", "error": report[0]["error"]}]
    assert not (out / "people.csv.jsonl").exists()

    for name, content, needle in [
        ("bad.json", "{not json", "malformed JSON at line 1"),
        ("bin.json", b"\xff\xfe\x00\x01", "not UTF-8"),
    ]:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        outcome = attempt(next(iter_inputs([str(path)])), processor, output_dir=out, timeout=None, print_="x")
        assert outcome.status == "failed" and needle in outcome.error


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("", "empty"),
        ("echo hello", "command using {input}"),
        ("cat {input} {bogus}", "only {input}"),
        ("records:/no/such/schema.json", "no such schema"),
    ],
)
def test_bad_processor_specs(spec, needle):
    with pytest.raises(ValidationError, match=needle):
        parse_processor(spec)


def test_same_bytes_at_two_paths_are_two_inputs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("same")
    b.write_text("same")
    assert fingerprint(a, "p", "{}") != fingerprint(b, "p", "{}")


def test_quoted_placeholders_are_quoted_for_their_context(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ["a$(touch PWNED1).txt", "b`touch PWNED2`.txt", "c'q\".txt"]:
        (src / name).write_text(name)
    for template in ['cat "{input}" > "{output}"', "cat '{input}' > {output}"]:
        processor = parse_processor(template)
        for file in iter_inputs([str(src)]):
            outcome = attempt(file, processor, output_dir=tmp_path / "out", timeout=10, print_="x")
            assert outcome.status == "completed", outcome.error
            assert (tmp_path / "out" / file.path.name).read_text() == file.path.name
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
    with pytest.raises(ValidationError, match="backtick"):
        parse_processor("echo `cat {input}`")


def test_an_output_suffix_in_the_template_is_kept(tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("x")
    out = tmp_path / "out"
    outcome = attempt(
        next(iter_inputs([str(src)])),
        parse_processor("gzip -c {input} > {output}.gz"),
        output_dir=out,
        timeout=10,
        print_="x",
    )
    assert outcome.status == "completed" and outcome.output_path == str(out / "f.txt.gz")
    assert sorted(p.name for p in out.iterdir()) == ["f.txt.gz"]


def test_globs_mirror_the_tree_and_symlinks_cannot_leave_the_roots(tmp_path):
    (tmp_path / "in" / "x").mkdir(parents=True)
    (tmp_path / "in" / "y").mkdir()
    (tmp_path / "in" / "x" / "d.csv").write_text("x")
    (tmp_path / "in" / "y" / "d.csv").write_text("y")
    found = sorted(f.relative.as_posix() for f in iter_inputs([str(tmp_path / "in" / "**" / "*.csv")]))
    assert found == ["x/d.csv", "y/d.csv"]
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("TOPSECRET")
    (tmp_path / "in" / "link").symlink_to(secret)
    with pytest.raises(PermissionFailure, match="links outside the allowed roots"):
        list(iter_inputs([str(tmp_path / "in")], allowed_roots=[str(tmp_path / "in")]))
