"""Bad input ends quickly, with one line and exit 3 (or 4 for a lost records database).

Each case once hung, crashed or took minutes: an alias bomb in YAML, a FIFO or a device given
as a file, a template that builds a gigabyte, what `plan` refused while `validate` said ok, and
a records database dying in the middle of a batch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.batch import main
from flows.errors import PermissionFailure, ValidationError
from tests.conftest import ROOT
from tests.maintenance.conftest import pg_admin_url, scratch_db, scratch_db_name  # noqa: F401
from tests.security.lose_records import LOSE_AT

LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[ERROR\] \[[^\]]+\] .+")
# What a fixed build answers in milliseconds; the old one hung past this (the guard fails it).
HANG = pytest.mark.timeout(60)


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and LOG_LINE.match(err[0]), err
    return err[0]


# --- YAML alias bombs ---------------------------------------------------------------------------

LEVELS = "abcdef"  # 9**6 values from six short lines; the full nine-level file is 9**9


def alias_bomb(levels: str = LEVELS, indent: str = "") -> str:
    lines = [f'{indent}{levels[0]}: &{levels[0]} ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip(levels, levels[1:], strict=False):
        lines.append(f"{indent}{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def bomb_line(text: str) -> int:
    """The line of the last anchor: its aliases are where 100,000 repeated values are passed."""
    return (
        text.splitlines().index(next(line for line in text.splitlines() if line.lstrip().startswith("f:")))
        + 1
    )


def test_the_billion_laughs_file_is_refused_naming_its_line():
    from flows.safe_yaml import load_yaml

    text = alias_bomb("abcdefghi")
    assert len(text.encode()) < 400
    with pytest.raises(ValidationError) as info:
        load_yaml(text, "laughs.yaml")
    assert info.value.where == "laughs.yaml:6" and "aliases" in info.value.message


@HANG
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_alias_bomb_workflow_is_exit_3_naming_the_line(tmp_path, capsys, command):
    text = (
        "name: bomb\nvariables:\n" + alias_bomb(indent="  ") + "steps:\n  - name: a\n    command: echo ok\n"
    )
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    assert cli(command, str(path)) == 3
    line = one_error_line(capsys)
    assert f"{path}:{bomb_line(text)}: YAML aliases repeat more than" in line


@HANG
def test_alias_bomb_in_every_yaml_opsflow_reads(tmp_path):
    from flows.files.config import load_batch_config
    from flows.maintenance.schema import load_expected
    from flows.workflow.scaffold import read_template

    text = alias_bomb()
    for name, load in [
        ("batches.yaml", lambda p: load_batch_config(p, None)),
        ("schema.yaml", load_expected),
        ("template.yaml", read_template),
    ]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValidationError) as info:
            load(path)
        assert info.value.where == f"{path}:{bomb_line(text)}", name
        assert "aliases repeat" in info.value.message, name


def test_an_alias_inside_its_own_anchor_is_refused():
    from flows.safe_yaml import load_yaml

    with pytest.raises(ValidationError, match="contains it") as info:
        load_yaml("ok: 1\nloop: &a [1, *a]\n", "loop.yaml")
    assert info.value.where == "loop.yaml:2"


def test_ordinary_aliases_still_load(tmp_path, capsys):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "name: anchors\nsteps:\n  - name: a\n    command: echo a\n    retry: &retry {attempts: 3, delay: 1s}\n"
        "  - name: b\n    command: echo b\n    retry: *retry\n"
    )
    assert cli("validate", str(path)) == 0
    assert "ok  " in capsys.readouterr().out


# --- FIFOs, devices and directories given as files -----------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    return path


@HANG
@pytest.mark.parametrize("command", ["validate", "plan"])
@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_workflow_that_is_not_a_regular_file_is_exit_3(tmp_path, fifo, capsys, command, kind):
    path = {"fifo": fifo, "device": Path("/dev/null"), "directory": tmp_path}[kind]
    assert cli(command, str(path)) == 3
    line = one_error_line(capsys)
    assert f"{path}: is " in line and "not a regular file" in line


@HANG
def test_every_file_opsflow_reads_refuses_a_fifo(tmp_path, fifo):
    from flows.files.config import load_batch_config
    from flows.files.processors import parse_processor
    from flows.maintenance.migrations import discover
    from flows.maintenance.schema import load_expected
    from flows.workflow.scaffold import read_template

    for load in (
        lambda p: load_batch_config(p, None),
        load_expected,
        read_template,
        lambda p: parse_processor(f"records:{p}"),
    ):
        with pytest.raises(ValidationError, match="FIFO"):
            load(fifo)
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_ok.sql").write_text("select 1;\n")
    os.mkfifo(migrations / "002_pipe.sql")
    with pytest.raises(ValidationError, match=r"002_pipe\.sql: is a FIFO"):
        discover(migrations)


@HANG
def test_batch_config_fifo_on_the_command_line_is_one_line(tmp_path, fifo, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    assert cli("files", "run", str(tmp_path / "in"), "--config", str(fifo), "--dry-run") == 3
    assert "is a FIFO (named pipe), not a regular file" in one_error_line(capsys)


def test_unreadable_file_is_still_exit_5(tmp_path, monkeypatch):
    from flows.user_files import read_user_text

    locked = tmp_path / "locked.yaml"
    locked.write_text("name: x\n")
    locked.chmod(0)
    real_open = os.open

    def refuse(path, *args, **kwargs):  # root reads every file: answer as the OS would anyone else
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionFailure):
        read_user_text(locked)


def test_files_over_the_size_limit_are_refused(tmp_path):
    from flows.user_files import MAX_FILE_BYTES, read_user_text

    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ValidationError, match="larger than 5 MiB"):
        read_user_text(big)


# --- templates that cost too much ---------------------------------------------------------------

EXPENSIVE = [
    "{{ 'x' * 100000000 }}",
    "{{ ['x'] * 10000000 }}",
    "{{ 2 ** 100000000 }}",
    "{{ '%100000000s' % 'x' }}",
    "{{ '{:>100000000}'.format('x') }}",
    "{{ 'x' | center(100000000) }}",
    "{{ ('a' * 600000) | replace('a', 'aa') }}",
    "{{ range(1000) | join('x' * 200000) }}",
    "{{ ('x' * 1000000) ~ ('x' * 1000000) }}",
]


@pytest.mark.parametrize("source", EXPENSIVE)
def test_expensive_constant_templates_fail_validate_with_file_and_line(tmp_path, capsys, source):
    path = tmp_path / "costly.yaml"
    path.write_text(f'name: costly\nsteps:\n  - name: a\n    command: "echo {source}"\n')
    assert cli("validate", str(path)) == 3
    line = one_error_line(capsys)
    assert f"{path}:4: " in line and ("1,048,576" in line or "16,384 bits" in line)


@pytest.mark.parametrize(
    ("source", "context", "words"),
    [
        ("{{ .s * .n }}", {"s": "x", "n": 100_000_000}, "1,048,576"),
        ("{{ .s | center(.n) }}", {"s": "x", "n": 100_000_000}, "1,048,576"),
        ("{{ .s.ljust(.n) }}", {"s": "x", "n": 100_000_000}, "1,048,576"),
        ("{{ .s.replace('x', .s) }}", {"s": "x" * 1100}, "1,048,576"),
        ("{{ range .xs }}{{ range $.xs }}{{ end }}{{ end }}", {"xs": list(range(100_000))}, "steps"),
        ("{{ range .xs }}{{ $.s }}{{ end }}", {"xs": list(range(100_000)), "s": "x" * 100}, "renders more"),
    ],
)
@HANG
def test_expensive_renders_stop_at_their_bounds(source, context, words):
    from flows.workflow.template import compile_template

    template = compile_template(source, where="deploy.yaml:7")
    with pytest.raises(ValidationError) as info:
        template.render(context)
    assert info.value.where == "deploy.yaml:7" and words in info.value.message


@HANG
def test_plan_of_a_nested_loop_ends_with_one_line(tmp_path, capsys):
    path = tmp_path / "loops.yaml"
    path.write_text(
        "name: loops\nsteps:\n  - name: a\n    command: >-\n"
        "      echo {{ range $i := range(100000) }}{{ range $j := range(100000) }}{{ end }}{{ end }}\n"
    )
    assert cli("plan", str(path)) == 3
    assert f"{path}:4: the template takes more than" in one_error_line(capsys)


def test_ordinary_templates_render_as_before():
    from flows.workflow.template import compile_template

    context = {"services": ["api", "worker"], "n": 3, "name": "v1"}
    assert compile_template("{{ join .services ',' }}").render(context) == "api,worker"
    assert (
        compile_template("{{ range $s := .services }}[{{ $s }}]{{ end }}").render(context) == "[api][worker]"
    )
    assert (
        compile_template("{{ '-' * .n }}{{ .name ~ '-x' }}{{ range(2) | list }}").render(context)
        == "---v1-x0 1"
    )
    assert compile_template("{{ '%05d' % .n }} {{ '{:>4}'.format(.name) }}").render(context) == "00003   v1"


# Each builds its gigabytes or its hours inside one filter or method call, out of the steps
# counted between calls: collecting what `map` yields, `select`/`reject` tests, summing lists,
# bytes. `.n` comes from a parameter, so the template is rendered by `plan`, not folded.
INTERMEDIATE = [
    ("range(.n) | map('string') | map('center', .n) | list | length", "what `list` collects"),
    ("range(.n) | map('string') | map('center', .n) | sort | length", "what `sort` collects"),
    ("join (range(.n) | map('string') | map('center', .n)) ',' | length", "a joined text"),
    ("','.join(range(.n) | map('string') | map('center', .n)) | length", "a joined text"),
    ("range(.n) | map('string') | map('center', 1000) | join(',') | length", "collects"),
    ("range(.n) | select('in', range(.n) | list) | list | length", "the template takes"),
    ("range(.n) | reject('in', range(.n) | list) | list | length", "the template takes"),
    ("(('x' * .n).encode().join(['a'.encode()] * .n)) | length", "bytes values are not supported"),
    ("((('%' ~ (.n * 9999) ~ 's').encode()) % ('x'.encode(),)) | length", "bytes values are not supported"),
    ("('x' * .n).encode() | length", "bytes values are not supported"),
]
# Each case's process may use this much memory: past it the old build ended in MemoryError.
HOSTILE_MEMORY = 2 * 1024**3


def _plan_in_a_subprocess(path: Path) -> subprocess.CompletedProcess[str]:
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({HOSTILE_MEMORY}, {HOSTILE_MEMORY}))"
    code = f"{limit}\nfrom flows.batch import main\nmain(['plan', {str(path)!r}])"
    # generous: a fixed build ends in seconds; the old one ran for minutes or ran out of memory
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("expression", "words"), INTERMEDIATE)
def test_filters_cannot_build_huge_intermediate_values(tmp_path, expression, words):
    path = tmp_path / "intermediate.yaml"
    path.write_text(
        "name: intermediate\nparameters:\n  - name: n\n    type: int\n    default: 100000\n"
        f'steps:\n  - name: a\n    command: "echo {{{{ {expression} }}}}"\n'
    )
    done = _plan_in_a_subprocess(path)
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 3, done.stderr[-2000:]
    assert len(err) == 1 and LOG_LINE.match(err[0]), err
    assert f"{path}:8: " in err[0] and words in err[0], err[0]
    assert "MemoryError" not in err[0]


@pytest.mark.timeout(300)
def test_a_sum_of_lists_is_built_in_one_pass(tmp_path):
    # `sum(start=[])` once copied the growing list for each item: hours for 100,000 short lists
    path = tmp_path / "flatten.yaml"
    lists = ",".join(["[1,2,3,4,5,6,7,8]"] * 100_000)
    path.write_text(
        f"name: flatten\nvariables:\n  xs: [{lists}]\n"
        "steps:\n  - name: a\n    command: echo {{ .xs | sum(start=[]) | length }}\n"
    )
    done = _plan_in_a_subprocess(path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "echo 800000" in done.stdout


@pytest.mark.parametrize(
    "source",
    ["{{ 'x'.encode() }}", "{{ ('x' * 10).encode() | length }}", "{{ 'ab'.encode('utf-16') }}"],
)
def test_bytes_fail_validate(tmp_path, capsys, source):
    path = write(tmp_path, f'name: b\nsteps:\n  - name: a\n    command: "echo {source}"\n')
    assert cli("validate", str(path)) == 3
    assert f"{path}:4: bytes values are not supported in templates" in one_error_line(capsys)


def test_filters_over_what_other_filters_yield_still_work():
    from flows.workflow.template import compile_template

    context = {"xs": [[1, 2], [3]], "names": ["b", "a", "c"]}
    assert compile_template("{{ .xs | sum(start=[]) | join(',') }}").render(context) == "1,2,3"
    assert compile_template("{{ range(5) | sum }}").render(context) == "10"
    assert compile_template("{{ .names | map('upper') | sort | join('') }}").render(context) == "ABC"
    assert compile_template("{{ range(10) | select('odd') | list | length }}").render(context) == "5"
    assert compile_template("{{ range(10) | reject('in', [1, 2]) | first }}").render(context) == "0"
    assert (
        compile_template("{{ .names | map('center', 3) | list | join('|') }}").render(context)
        == " b | a | c "
    )


# --- validate refuses what plan and run refuse --------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    return path


def test_a_default_that_does_not_fit_its_type_fails_validate(tmp_path, capsys):
    path = write(
        tmp_path,
        "name: d\nparameters:\n  - name: n\n    type: int\n    default: abc\nsteps:\n  - name: a\n    command: echo {{ .n }}\n",
    )
    assert cli("validate", str(path)) == 3
    assert f"{path}:5: `default`: parameter `n` must be an int, got 'abc'" in one_error_line(capsys)
    assert cli("plan", str(path), "--set", "n=4") == 3  # the file is wrong whatever the run is given
    capsys.readouterr()


ESCAPES = [
    "''.__class__.__mro__",
    "cycler.__init__.__globals__",
    "lipsum.__globals__",
    "self",
    "self._TemplateReference__context",
    "range.__init__",
    "'x' | attr('__class__')",
    "range(3) | map(attribute='__class__') | list",
    "'{0.__class__}'.format(1)",
    ".environment['__class__']",
]


@pytest.mark.parametrize("expression", ESCAPES)
def test_sandbox_escapes_fail_validate(tmp_path, capsys, expression):
    path = write(tmp_path, f'name: e\nsteps:\n  - name: a\n    command: "echo {{{{ {expression} }}}}"\n')
    assert cli("validate", str(path)) == 3
    line = one_error_line(capsys)
    assert f"{path}:4: " in line
    assert "sandbox" in line or "not declared" in line  # cycler and lipsum are not offered at all


def test_undeclared_names_fail_validate_unless_given_with_set(tmp_path, capsys):
    path = write(tmp_path, "name: u\nsteps:\n  - name: a\n    command: echo {{ .image_tag }}\n")
    assert cli("validate", str(path)) == 3
    assert f"{path}:4: `.image_tag` is not declared" in one_error_line(capsys)
    assert cli("validate", "--set", "image_tag=v2", str(path)) == 0
    capsys.readouterr()
    assert cli("plan", str(path)) == 3  # what validate says is what plan does
    capsys.readouterr()
    assert cli("plan", "--set", "image_tag=v2", str(path)) == 0


VARIABLE_CYCLES = [
    (
        {"a": "{{ .b }}-x", "b": "{{ .c }}", "c": "{{ .a }}"},
        3,
        "variables use each other in a cycle: `a` → `b` → `c` → `a`",
    ),
    ({"a": "{{ .a }}-x"}, 3, "variable `a` uses itself"),
    (
        {"tag": "v1", "b": "{{ if .tag }}{{ .c }}{{ end }}", "c": "{{ join (list (.b)) ',' }}"},
        4,
        "variables use each other in a cycle: `b` → `c` → `b`",
    ),
    ({"a": "{{ .b }}", "b": "y"}, 3, "variable `a` uses `.b`, which is defined after it"),
]


@pytest.mark.parametrize(("variables", "line", "words"), VARIABLE_CYCLES)
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_variables_that_use_each_other_fail_validate_naming_the_cycle(
    tmp_path, capsys, variables, line, words, command
):
    body = "".join(f'  {key}: "{value}"\n' for key, value in variables.items())
    path = write(
        tmp_path, f"name: v\nvariables:\n{body}steps:\n  - name: a\n    command: echo {{{{ .a }}}}\n"
    )
    assert cli(command, str(path)) == 3
    assert f"{path}:{line}: {words}" in one_error_line(capsys)


def test_a_variable_may_derive_from_a_parameter_of_its_own_name(tmp_path, capsys):
    path = write(
        tmp_path,
        "name: v\nparameters:\n  - name: tag\n    default: v1\nvariables:\n"
        '  tag: "{{ .tag }}-rc"\n  a: "{{ .tag }}"\nsteps:\n  - name: a\n    command: echo {{ .a }}\n',
    )
    assert cli("validate", str(path)) == 0
    capsys.readouterr()


STEP = "name: n\nsteps:\n  - name: s\n    command: echo hi\n"
TOP = "name: n\n{}\nsteps:\n  - name: s\n    command: echo hi\n"
NUMERIC_FIELDS = [
    (STEP + "    timeout: 0\n", 5, "steps.0.timeout: a timeout must be more than 0 seconds"),
    (STEP + "    timeout: 0s\n", 5, "steps.0.timeout: a timeout must be more than 0 seconds"),
    (
        STEP + "    resources: {memory: 0}\n",
        5,
        "steps.0.resources.memory: a memory size must be at least 1 byte",
    ),
    (
        STEP + "    resources: {memory: -5}\n",
        5,
        "steps.0.resources.memory: a memory size must be at least 1 byte",
    ),
    (
        STEP + "    resources: {memory: 99999999Ti}\n",
        5,
        "steps.0.resources.memory: a memory size may be at most 1Pi",
    ),
    (
        STEP + "    resources: {cpu: 1e30}\n",
        5,
        "steps.0.resources.cpu: a CPU amount may be at most 10,000 cores",
    ),
    (
        "name: n\nsteps:\n  - name: g\n    parallel_limit: 100000000\n    steps: [{command: echo}]\n",
        4,
        "steps.0.parallel_limit: Input should be less than or equal to 1000",
    ),
    (
        TOP.format("resource_limits: {max_parallel: 100000000}"),
        2,
        "resource_limits.max_parallel: Input should be less",
    ),
    (
        TOP.format("resource_limits: {memory_limit: 0}"),
        2,
        "resource_limits.memory_limit: a memory size must be",
    ),
    (
        TOP.format("prerequisites: [{name: p, command: 'true', timeout: 0}]"),
        2,
        "prerequisites.0.timeout: a timeout must be more than 0 seconds",
    ),
]


@pytest.mark.parametrize(("text", "line", "words"), NUMERIC_FIELDS)
def test_numbers_out_of_bounds_fail_validate_naming_the_field(tmp_path, capsys, text, line, words):
    path = write(tmp_path, text)
    assert cli("validate", str(path)) == 3
    assert f"{path}:{line}: {words}" in one_error_line(capsys)


def test_run_options_out_of_bounds_are_exit_3(tmp_path, capsys, monkeypatch):
    from flows.settings import get_settings

    path = write(tmp_path, "name: o\nsteps:\n  - name: s\n    command: echo hi\n")
    assert cli("run", str(path), "--timeout", "0", "--dry-run") == 3
    assert "--timeout: a timeout must be more than 0 seconds" in one_error_line(capsys)
    assert cli("run", str(path), "--parallel", "100000000", "--dry-run") == 3
    capsys.readouterr()
    monkeypatch.setenv("OPSFLOW_PARALLEL", "0")
    get_settings.cache_clear()
    try:
        assert cli("run", str(path), "--dry-run") == 3
        assert "OPSFLOW_PARALLEL: Input should be greater than or equal to 1" in one_error_line(capsys)
    finally:
        get_settings.cache_clear()


# --- the records database dies in the middle of `files run` -------------------------------------


@pytest.mark.services
@pytest.mark.timeout(240)
def test_records_database_lost_mid_batch_is_one_line_exit_4_and_an_interrupted_job(
    prefect_api, request, tmp_path, monkeypatch, capsys
):
    import psycopg

    # a PostgreSQL database of this test's own (tests/maintenance/conftest.py), dropped afterwards
    admin, scratch, name = (
        request.getfixturevalue(f) for f in ("pg_admin_url", "scratch_db", "scratch_db_name")
    )

    from flows.records.db import dispose_engines

    source = tmp_path / "in"
    source.mkdir()
    for i in range(60):
        (source / f"f{i:03d}.txt").write_text(f"file {i}\n")
    home = tmp_path / "home"
    env = dict(
        os.environ,
        OPSFLOW_HOME=str(home),
        OPSFLOW_DATABASE_URL=scratch,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        **{LOSE_AT: json.dumps({"admin": admin, "database": name, "at": "f030.txt"})},
    )
    processor = "tests.security.lose_records:lose_records_at"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flows.batch", "files", "run", str(source), "-p", processor,
             "-o", str(tmp_path / "out"), "--retries", "0", "--json"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=180,
        )  # fmt: skip
        assert done.returncode == 4, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "records database" in errors[0] and "interrupted after" in errors[0]
        summary = json.loads(done.stdout)  # --json still prints a document
        assert summary["status"] == "interrupted" and "records database" in summary["error"]
        assert 0 < summary["processed"] < 60

        # While the database is away, the next command says so in one line (exit 4)...
        monkeypatch.setenv("OPSFLOW_HOME", str(home))
        monkeypatch.setenv("OPSFLOW_DATABASE_URL", scratch)
        capsys.readouterr()
        assert cli("files", "history", "--json") == 4
        assert "records database" in one_error_line(capsys)
        assert list((home / "interrupted").glob("*.json"))  # what the batch knew is kept meanwhile

        # ...and once it answers again, the job is marked interrupted with what was committed.
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        dispose_engines()
        assert cli("files", "history", "--json") == 0
        job = json.loads(capsys.readouterr().out)[0]
        with psycopg.connect(scratch) as conn:
            committed = conn.execute(
                "SELECT count(*) FROM job_results WHERE job_id = %s AND status = 'completed'", (job["id"],)
            ).fetchone()[0]
        assert job["id"] == summary["job_id"] and job["status"] == "interrupted"
        assert job["processed"] == committed == summary["processed"]
        assert "records database" in job["error"]
        assert not list((home / "interrupted").glob("*.json"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        dispose_engines()


def test_files_history_shows_a_running_batch_whose_process_is_gone_as_killed(tmp_path, monkeypatch, capsys):
    from flows.records import files as store
    from flows.records.db import dispose_engines, session
    from flows.records.liveness import this_process

    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("OPSFLOW_DATABASE_URL", raising=False)
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        with session() as db:
            here = this_process()
            dead = store.start_job(db, processor="cp", status="running", host=here["host"], pid=gone.pid)
            alive = store.start_job(db, processor="cp", status="running", host=here["host"], pid=os.getppid())
            dead_id, alive_id = dead.id, alive.id
        assert cli("files", "history", "--json") == 0
        shown = {job["id"]: job["status"] for job in json.loads(capsys.readouterr().out)}
        assert shown == {dead_id: "killed", alive_id: "running"}
        assert cli("files", "report", dead_id, "--json") == 0
        assert json.loads(capsys.readouterr().out)["status"] == "killed"
    finally:
        dispose_engines()


# --- what a failing file's line says comes next -------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--retries", "0"], "(no retries, no fallback: it goes to the dead-letter queue)"),
        (["--retries", "2", "--retry-delay", "0"], "(will retry, up to 2 time(s))"),
        (["--fail-fast"], "(--fail-fast: the batch stops)"),
    ],
)
def test_a_failing_file_says_what_really_comes_next(tmp_path, prefect_api, options, says):
    source = tmp_path / "in"
    source.mkdir()
    (source / "broken.txt").write_text("x")
    env = dict(os.environ, OPSFLOW_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("OPSFLOW_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch", "files", "run", str(source), "-p", "false {input}", *options],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=240,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "broken.txt: " in line and "exit code" in line]
    assert lines and lines[0].endswith(says), done.stderr[-3000:]
    if options == ["--retries", "0"]:
        assert "will retry" not in done.stderr


# --- control characters cannot rewrite the terminal ---------------------------------------------

CONTROLS = "\x1b[2J\rFORGED\u202e\x85\x07\n[2026-01-01 00:00:00] [INFO] [opsflow] all good"
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_an_error_about_a_file_with_control_characters_in_its_name_is_one_escaped_line(tmp_path, capsys):
    path = tmp_path / "evil\x1b[2J\rname.yaml"
    path.write_text("name: e\nsteps:\n  - name: s\n    command: echo {{ .nope }}\n")
    assert cli("validate", str(path)) == 3
    line = one_error_line(capsys)
    assert "evil\\x1b[2J\\rname.yaml:4: `.nope` is not declared" in line
    assert not RAW_CONTROLS.search(line)


def test_plan_shows_control_characters_of_values_escaped(tmp_path, capsys):
    path = write(
        tmp_path, 'name: p\nparameters:\n  - name: msg\nsteps:\n  - name: s\n    command: echo "{{ .msg }}"\n'
    )
    assert cli("plan", str(path), "--set", f"msg={CONTROLS}") == 0
    out = capsys.readouterr().out
    assert not RAW_CONTROLS.search(out)
    assert "parameters: msg=\\x1b[2J\\rFORGED\\u202e\\x85\\x07\\n[2026-01-01 00:00:00] [INFO]" in out
    assert not any(line.startswith("[2026-01-01") for line in out.splitlines())


@pytest.mark.timeout(300)
def test_a_steps_output_cannot_rewrite_the_terminal(tmp_path, prefect_api):
    path = write(
        tmp_path,
        "name: noisy\nsteps:\n  - name: s\n"
        "    command: printf 'before\\033[2J\\rFORGED\\342\\200\\256tail\\n'; exit 3\n",
    )
    env = dict(os.environ, OPSFLOW_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("OPSFLOW_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch", "run", str(path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=240,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "before\\x1b[2J\\rFORGED\\u202etail" in done.stderr, done.stderr[-3000:]
    assert not RAW_CONTROLS.search(done.stderr + done.stdout)
