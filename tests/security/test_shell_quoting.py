"""Values in shell commands never run as code: the corpus, each construct with hostile values.

Every command is a real workflow file going through the real stages (load, validate, bind,
plan); what passes is run by bash as opsflow runs it, and must print the literal value and
create no marker file. What cannot be quoted safely is refused, at validate time when the
command is the problem, when the value is bound or rendered when the value is.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.errors import ValidationError
from flows.files.discover import iter_inputs
from flows.files.processors import parse_processor
from flows.files.work import attempt
from flows.workflow.check import analyse
from flows.workflow.load import load_workflow
from flows.workflow.params import bind
from flows.workflow.plan import plan_workflow
from flows.workflow.shell import private_script, shell_argv
from flows.workflow.template import compile_template
from tests.security.shellgen import VALUE, Generator

# Hostile values; {m} is the marker file that must never be created.
HOSTILE = {
    "subst": "$(touch {m})",
    "semicolon": "; touch {m}",
    "backtick": "`touch {m}`",
    "dquote": '"; touch {m}; "',
    "squote": "'; touch {m}; '",
    "eof": "x\nEOF\ntouch {m}\nEOF",
    "option": "--checkpoint=1 --checkpoint-action=exec=touch {m}",
    "subscript": "a[$(touch {m})]",
    "glob": "* ? [a] ~ $HOME \\ \\n ${x} !! %s",
}
OPTION = "starts with `-`"
CHOOSES = "chooses what runs"
EOF_LINE = "which ends its here-document early"


def workflow(path: Path, command: str, parameters: list[dict[str, Any]] | None = None, **extra: Any) -> Path:
    """A one-step workflow file running `command`; a string parameter `x` unless told otherwise."""
    document = {
        "name": "quoting",
        "parameters": parameters if parameters is not None else [{"name": "x", "default": "v"}],
        **extra,
        "steps": [{"name": "step", "command": command}],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return path


def rendered(path: Path, sets: dict[str, Any]) -> str:
    """The step's command as `run` would execute it: load, validate, bind, plan."""
    loaded = load_workflow(path)
    analysis = analyse(loaded)
    bound = bind(loaded, sets, environment=None, default_environment="test", workflow_id="wf-1")
    return plan_workflow(loaded, analysis.graph, bound).steps[0].text


def run_bash(command: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """`command` run as steps run it: bash --noprofile --norc -eo pipefail, reading the text
    from a private file (never from its command line)."""
    with private_script(command) as fd:
        return subprocess.run(
            shell_argv(command, None, fd)[0],
            pass_fds=(fd,),
            capture_output=True,
            cwd=cwd,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def bash(command: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return run_bash(command, cwd, 60)


def same(value: str) -> str:
    return value + "\n"


@dataclass
class Runs:
    """A construct where values are quoted: the command runs and prints `expect(value)`."""

    name: str
    command: str
    expect: Callable[[str], str] = same
    refuses: dict[str, str] = field(default_factory=dict)  # hostile key -> message when refused
    as_list: bool = False  # `x` is a list parameter given [value, "b"]


OPTION_ONLY = {"option": OPTION}
RUNS = [
    # the constructs that ran a hostile value
    Runs(
        "arithmetic inside $( ) inside quotes",
        'echo "r: $(echo $((1+1)) "{{ .x }}")"',
        lambda v: f"r: 2 {v}".rstrip("\n") + "\n",  # $( ) drops trailing newlines
        OPTION_ONLY,
    ),
    Runs(
        "case pattern inside $( ) inside quotes",
        'echo "status = $(case {{ .x }} in *) echo {{ .x }} ok;; esac)"',
        lambda v: f"status = {v} ok\n",
        OPTION_ONLY,
    ),
    Runs("here-document line starting with a value", "cat <<EOF\n{{ .x }}\nEOF", same, {"eof": EOF_LINE}),
    # the matrix of quoting contexts
    Runs("outside quotes", "printf '%s\\n' {{ .x }}", same, OPTION_ONLY),
    Runs("after -- an option is data", "printf -- '%s\\n' {{ .x }}"),
    Runs("double quotes", 'printf "%s\\n" "v={{ .x }}"', lambda v: f"v={v}\n"),
    Runs("single quotes", "printf '%s\\n' 'v={{ .x }}'", lambda v: f"v={v}\n"),
    Runs("glued to quoted text", "printf '%s\\n' \"a\"{{ .x }}'b'", lambda v: f"a{v}b\n"),
    Runs("comment", "echo hi # {{ .x }}", lambda v: "hi\n"),
    Runs(
        "here-document",
        "cat <<EOF\nv={{ .x }} and $((1+1))\nEOF",
        lambda v: f"v={v} and 2\n",
        {"eof": EOF_LINE},
    ),
    Runs(
        "quoted here-document",
        "cat <<'EOF'\nv={{ .x }} $HOME\nEOF",
        lambda v: f"v={v} $HOME\n",
        {"eof": EOF_LINE},
    ),
    Runs(
        "here-document with <<-",
        "cat <<-EOF\n\tv={{ .x }}\n\tEOF",
        lambda v: "\n".join(line.lstrip("\t") for line in f"v={v}".split("\n")) + "\n",
        {"eof": EOF_LINE},
    ),
    Runs(
        "here-document inside $( ) inside quotes",
        'v="$(cat <<EOF\n{{ .x }}\nEOF\n)"\nprintf "%s\\n" "$v"',
        lambda v: v.rstrip("\n") + "\n",
        {"eof": EOF_LINE},
    ),
    Runs(
        "nested substitutions in quotes",
        'printf "%s\\n" "a$(printf "%s" "b$(printf "%s" "{{ .x }}")")"',
        lambda v: f"ab{v}".rstrip("\n") + "\n",
        OPTION_ONLY,
    ),
    Runs("process substitution", "cat <(printf '%s\\n' {{ .x }})", same, OPTION_ONLY),
    Runs("here-string", "cat <<< {{ .x }}", same),
    Runs("array element", "arr=({{ .x }} b); printf '%s\\n' \"${arr[0]}\"", same),
    Runs("assignment", "v={{ .x }}; printf '%s\\n' \"$v\"", same),
    Runs("export", "export V={{ .x }}; printf '%s\\n' \"$V\"", same),
    Runs("local in a function", "f() { local v={{ .x }}; printf '%s\\n' \"$v\"; }; f", same),
    Runs("case pattern", "case {{ .x }} in {{ .x }}) echo match;; *) echo no;; esac", lambda v: "match\n"),
    Runs("[[ == ]] pattern", "[[ {{ .x }} == {{ .x }} ]] && echo same", lambda v: "same\n"),
    Runs("[ ] operand", "[ {{ .x }} = {{ .x }} ] && echo same", lambda v: "same\n"),
    Runs(
        "[ -gt ] is not arithmetic", "[ {{ .x }} -gt 3 ] 2>/dev/null && echo big || echo no", lambda v: "no\n"
    ),
    # what these print does not depend on whether the value names a program or a duration
    # (`eval`, `5s`): only on nothing of the value running
    Runs(
        "command -v looks a name up",
        "command -v {{ .x }} >/dev/null || :; echo looked",
        lambda v: "looked\n",
        OPTION_ONLY,
    ),
    Runs(
        "timeout's duration",
        "timeout {{ .x }} true 2>/dev/null || :; echo ran",
        lambda v: "ran\n",
        OPTION_ONLY,
    ),
    Runs("safe form of sh -c", 'sh -c \'printf "%s\\n" "$1"\' _ {{ .x }}', same, OPTION_ONLY),
    Runs("safe form of ssh: stdin", "printf -- '%s\\n' {{ .x }} | cat", same),
    Runs(
        "for list",
        "for v in {{ .x }}; do printf '%s\\n' \"$v\"; done",
        lambda v: f"{v}\nb\n",
        as_list=True,
    ),
    Runs("list words", "printf -- '%s\\n' {{ .x }}", lambda v: f"{v}\nb\n", as_list=True),
    Runs(
        "range block, balanced",
        "{{ range .x }}printf '%s\\n' \"{{ . }}\"\n{{ end }}",
        lambda v: f"{v}\nb\n",
        {"option": "starts with `-`, so `printf` would take it"},
        as_list=True,
    ),
    Runs("trap reading a variable", 'v={{ .x }}; trap \'printf "%s\\n" "$v"\' EXIT', same),
    Runs(
        "safe form through wrappers",
        'timeout -- 30 env -i sh -c \'printf "%s\\n" "$1"\' _ {{ .x }}',
        same,
        OPTION_ONLY,
    ),
    Runs(
        "associative array key",
        "declare -A m=([k{{ .x }}]=1); printf '%s\\n' \"${!m[@]}\"",
        lambda v: f"k{v}\n",
    ),
    Runs(
        "sed --sandbox script",
        "printf 'a\\n' | sed --sandbox -n 's/a/[{{ .x }}]/p' >/dev/null 2>&1 || true; echo ok",
        lambda v: "ok\n",
    ),
    Runs("coproc's arguments", "coproc printf -- '%s\\n' {{ .x }} > out; wait; cat out", same),
    Runs(
        "coproc block reading a variable",
        "v={{ .x }}; coproc N { printf '%s\\n' \"$v\" > out; }; wait; cat out",
        same,
    ),
    Runs("setpriv's command", "setpriv --nnp -- printf -- '%s\\n' {{ .x }}", same),
    Runs("name reference to a literal name", "declare -n r=v; v={{ .x }}; printf '%s\\n' \"$r\"", same),
    Runs("trimmed whitespace", "printf -- '%s\\n' x\n  {{- .x -}}  \n", lambda v: f"x{v}\n"),
]


def _sets(case: Runs, value: str) -> dict[str, Any]:
    return {"x": [value, "b"] if case.as_list else value}


def _parameters(case: Runs) -> list[dict[str, Any]]:
    return [
        {"name": "x", "type": "list", "default": ["v"]} if case.as_list else {"name": "x", "default": "v"}
    ]


@pytest.mark.parametrize("key", sorted(HOSTILE))
@pytest.mark.parametrize("case", RUNS, ids=lambda c: c.name)
def test_hostile_values_print_literally_and_run_nothing(case: Runs, key: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    value = HOSTILE[key].replace("{m}", str(marker))
    path = workflow(tmp_path / "wf.yaml", case.command, _parameters(case))
    if key in case.refuses:
        with pytest.raises(ValidationError, match=case.refuses[key]):
            rendered(path, _sets(case, value))
        return
    command = rendered(path, _sets(case, value))
    result = bash(command, tmp_path)
    assert result.returncode == 0, (command, result.stderr)
    assert result.stdout.decode() == case.expect(value), command
    assert not marker.exists(), command


@dataclass
class Refused:
    """A construct where no quoting is safe: `validate` refuses the file."""

    name: str
    command: str
    message: str
    parameters: list[dict[str, Any]] | None = None


INT = [{"name": "x", "type": "int", "default": 1}]
REFUSED = [
    # the constructs that ran a hostile value
    Refused(
        "arithmetic in $( ) in quotes", 'echo "took $(( $(date +%s) - {{ .x }} ))s"', "lands in arithmetic"
    ),
    Refused("here-document <<'EOF'X", "cat <<'EOF'X\n{{ .x }}\nEOF\necho hi\nEOFX", "delimiter `'EOF'X`"),
    # here-documents bash ends elsewhere than its grammar
    Refused("blank before the delimiter", "cat <<EOF\n EOF\necho {{ .x }}\nEOF", "another line"),
    Refused("line continued into the delimiter", "cat <<EOF\na\\\nEOF\necho {{ .x }}\nEOF", "another line"),
    Refused("two here-documents on a line", "cat <<A; cat <<B\n{{ .x }}\nA\nb\nB", "grammar cannot read"),
    Refused("value as delimiter", "cat <<{{ .x }}\nEOF\n", "grammar cannot read"),
    # arithmetic positions: bash evaluates `a[$(cmd)]` there, quoted or not
    Refused("(( ))", "(( n = {{ .x }} + 1 ))", "lands in arithmetic"),
    Refused("let", 'let "n={{ .x }}*2"', "lands in arithmetic"),
    Refused("[[ -gt ]]", '[[ "{{ .x }}" -gt 3 ]]', "lands in arithmetic"),
    Refused("array subscript", 'a=(1 2); echo "${a[{{ .x }}]}"', "lands in arithmetic"),
    Refused("subscript assignment", "a[{{ .x }}]=1", "lands in arithmetic"),
    Refused("${x:offset}", 's=abc; echo "${s:{{ .x }}:1}"', "lands in arithmetic"),
    Refused("c-style for", "for ((i=0; i<{{ .x }}; i++)); do :; done", "lands in arithmetic"),
    Refused("declare -i", "declare -i n; n={{ .x }}", "lands in arithmetic"),
    Refused("output of $( ) in arithmetic", "echo $(( $(echo {{ .x }}) + 1 ))", "lands in arithmetic"),
    Refused("[[ ]] on a $( ) output", "[[ $(echo {{ .x }}) -gt 3 ]]", "lands in arithmetic"),
    # second shells: the value would be their code
    Refused("sh -c", "sh -c 'echo {{ .x }}'", "sh -c '... \"$1\" ...' _ VALUE"),
    Refused("bash -c, double quotes", 'bash -c "echo {{ .x }}"', "`bash -c` runs its argument as code"),
    Refused("dash -c", "dash -c 'echo {{ .x }}'", "`dash -c`"),
    Refused("zsh -c", "zsh -c 'echo {{ .x }}'", "`zsh -c`"),
    Refused("sudo bash -lc", 'sudo -u app bash -lc "echo {{ .x }}"', "`bash -c`"),
    Refused("env sh -ec", "env sh -ec 'echo {{ .x }}'", "`sh -c`"),
    Refused("a value as the script", "bash -c {{ .x }}", "`bash -c`"),
    Refused("find -exec sh -c", "find . -exec sh -c 'echo {{ .x }}' \\;", "`sh -c`"),
    Refused("xargs sh -c", "echo a | xargs sh -c 'echo {{ .x }}'", "`sh -c`"),
    Refused("sh -c on a $( ) output", 'sh -c "$(echo {{ .x }})"', "`sh -c`"),
    Refused("eval", 'eval "echo {{ .x }}"', "`eval` runs its arguments as shell code"),
    Refused("su -c", "su -c 'echo {{ .x }}' nobody", "`su -c`"),
    Refused("runuser -c", "runuser -u app -c 'echo {{ .x }}'", "`runuser -c`"),
    Refused("flock -c", "flock /tmp/lock -c 'echo {{ .x }}'", "`flock -c`"),
    Refused("watch", "watch -n 5 echo {{ .x }}", "`watch`"),
    Refused("ssh remote command", "ssh -p 22 host echo {{ .x }}", "remote user's shell"),
    Refused("ssh -o", "ssh -o {{ .x }} host", "ProxyCommand"),
    Refused("python -c", "python3 -c \"print('{{ .x }}')\"", "`python3 -c`"),
    Refused("here-document to bash", "bash <<EOF\necho {{ .x }}\nEOF", "is the program `bash` runs"),
    Refused("here-document to ssh", "ssh host <<EOF\necho {{ .x }}\nEOF", "is the program `ssh` runs"),
    Refused("here-document to python -", "python3 - <<EOF\nprint('{{ .x }}')\nEOF", "`python3` runs"),
    Refused("here-string to sh", "sh <<< {{ .x }}", "is the program `sh` runs"),
    Refused("pipe to sh", "echo {{ .x }} | sh", "run as code by `sh`"),
    Refused("here-document piped to sh", "cat <<EOF | sh\necho {{ .x }}\nEOF", "is the program `sh` runs"),
    # text bash runs later, or through a wrapper, or from a file a substitution writes
    Refused("trap action", "trap 'echo {{ .x }}' EXIT", "`trap` runs its action"),
    Refused("trap in a block", '{ trap -- "echo {{ .x }}" INT; }', "`trap` runs its action"),
    Refused("command eval", 'command eval "echo {{ .x }}"', "`eval` runs its arguments"),
    Refused("builtin eval", 'builtin eval "echo {{ .x }}"', "`eval` runs its arguments"),
    Refused("time eval", 'time eval "echo {{ .x }}"', "`eval` runs its arguments"),
    Refused("eval after wrappers", 'command -p builtin eval "echo {{ .x }}"', "`eval` runs its arguments"),
    Refused("second -e of perl", "perl -e 'print 1;' -e 'print \"{{ .x }}\"'", "`perl -e`"),
    Refused("bash <( )", "bash <(echo 'echo {{ .x }}')", "process substitution is run as code by `bash`"),
    Refused("source <( )", "source <(echo 'echo {{ .x }}')", "run as code by `source`"),
    Refused("sh < <( )", "sh < <(echo 'echo {{ .x }}')", "run as code by `sh`"),
    Refused("> >(sh)", "echo 'echo {{ .x }}' > >(sh)", "run as code by `sh`"),
    Refused("bash /dev/stdin", "bash /dev/stdin <<< 'echo {{ .x }}'", "the program `bash` runs"),
    Refused(
        "pipe to source /dev/stdin", "echo 'echo {{ .x }}' | source /dev/stdin", "run as code by `source`"
    ),
    Refused("pipe to xargs sh -c", "echo 'echo {{ .x }}' | xargs sh -c", "run as code by `xargs`"),
    Refused("declare -ai element", "declare -ai a; a[0]={{ .x }}", "lands in arithmetic"),
    Refused("array literal subscript", "a=([{{ .x }}]=1)", "lands in arithmetic"),
    Refused("RANDOM", "RANDOM={{ .x }}", "lands in arithmetic"),
    Refused("OPTIND", "OPTIND={{ .x }}", "lands in arithmetic"),
    Refused("compgen -W", "compgen -W '{{ .x }}'", "`compgen -W`"),
    Refused("compgen -C", "compgen -C 'echo {{ .x }}' a", "`compgen -W`"),
    Refused("complete -C", "complete -C 'echo {{ .x }}' foo", "`complete -W`"),
    Refused("mapfile -C", "mapfile -C 'echo {{ .x }}' -c 1 a < /dev/null", "`mapfile -C`"),
    Refused("readarray -C", 'readarray -C "echo {{ .x }}" a < /dev/null', "`readarray -C`"),
    Refused("PS4", "PS4='$(echo {{ .x }})'; set -x", "`PS4` is run or expanded as code"),
    Refused("export PROMPT_COMMAND", "export PROMPT_COMMAND='echo {{ .x }}'", "`PROMPT_COMMAND`"),
    Refused("BASH_ENV before a command", "BASH_ENV='{{ .x }}' bash -c true", "`BASH_ENV`"),
    Refused("env ENV=", "env ENV='{{ .x }}' sh -c true", "`ENV`"),
    Refused("alias", "alias a='echo {{ .x }}'", "`alias` defines shell code"),
    Refused("bind -x", "bind -x '\"\\C-x\":echo {{ .x }}'", "`bind` defines shell code"),
    Refused("script -c", "script -qc 'echo {{ .x }}' /dev/null", "`script -c`"),
    Refused("parallel command words", "parallel echo {{ .x }} ::: a", "`parallel` runs its command words"),
    Refused("sudo -s", "sudo -s echo {{ .x }}", "`sudo -s`"),
    Refused("env -S", "env -S 'echo {{ .x }}'", "`env -S`"),
    Refused("sg", "sg adm 'echo {{ .x }}'", "`sg` runs its command"),
    Refused("node --print", "node --print '\"{{ .x }}\"'", "`node -e`"),
    Refused("node --eval=", "node --eval='console.log(\"{{ .x }}\")'", "`node -e`"),
    Refused("php -r", "php -r 'echo \"{{ .x }}\";'", "`php -r`"),
    Refused("awk program", "awk 'BEGIN { print \"{{ .x }}\" }'", "awk -v name=VALUE"),
    Refused("timeout awk program", "timeout -- 5 gawk -F: '{ print \"{{ .x }}\" }' /dev/null", "`gawk`"),
    Refused("sed script", "sed 's/a/{{ .x }}/' /dev/null", "`sed --sandbox`"),
    Refused("sed -e script", "echo a | sed -n -e 's/a/{{ .x }}/ep'", "`sed --sandbox`"),
    # a value choosing what runs: the command's name, what a wrapper runs, a script file
    Refused("command name", "{{ .x }} a", CHOOSES),
    Refused("command name in quotes", '"{{ .x }}" a', CHOOSES),
    Refused("part of the command name", "/opt/{{ .x }}/bin/run", CHOOSES),
    Refused("command name after a pipe", "echo a | {{ .x }}", CHOOSES),
    Refused("command name from $( )", "$(echo {{ .x }}) a", CHOOSES),
    Refused("sudo", "sudo -u app {{ .x }} a", CHOOSES),
    Refused("env", "env A=1 {{ .x }} a", CHOOSES),
    Refused("env with a value before the command", "env {{ .x }} a", CHOOSES),
    Refused("xargs", "echo a | xargs {{ .x }}", CHOOSES),
    Refused("timeout", "timeout 5 {{ .x }} a", CHOOSES),
    Refused("exec", "exec {{ .x }} a", CHOOSES),
    Refused("find -exec", "find . -exec {{ .x }} {} \\;", CHOOSES),
    Refused("source", "source {{ .x }}", CHOOSES),
    Refused(". file", ". {{ .x }}", CHOOSES),
    Refused("bash file", "bash {{ .x }}", CHOOSES),
    Refused("sh file", "sh -e {{ .x }} a", CHOOSES),
    Refused("python file", "python3 -u {{ .x }}", CHOOSES),
    Refused("python -m module", "python3 -m {{ .x }}", CHOOSES),
    Refused("awk -f file", "awk -f {{ .x }} /dev/null", CHOOSES),
    Refused("sudo bash file", "sudo bash {{ .x }}", CHOOSES),
    # quoting that cannot hold a value
    Refused("backticks", "echo `echo {{ .x }}`", "backticks"),
    Refused("$'...'", "echo $'{{ .x }}'", "$'...'"),
    Refused("${...:-}", "echo ${v:-{{ .x }}}", "${...}"),
    Refused("${...:-} in quotes", 'echo "${v:-{{ .x }}}"', "${...}"),
    Refused("$ right before", "echo ${{ .x }}", "right after `$`"),
    Refused("$ right before, in quotes", 'echo "${{ .x }}"', "right after `$`"),
    Refused("backslash right before", "echo \\{{ .x }}", "backslash"),
    Refused("backslash right before, in quotes", 'echo "\\{{ .x }}"', "backslash"),
    Refused("whitespace trimmed up to a backslash", "echo a \\\n  {{- .x }}", "backslash"),
    # variable names: bash evaluates `a[$(cmd)]` in them
    Refused("read", "read -r {{ .x }} < /dev/null", "variable's name"),
    Refused("printf -v", "printf -v {{ .x }} %s a", "variable's name"),
    Refused("for variable", "for {{ .x }} in a; do :; done", "variable's name"),
    Refused("unset", "unset {{ .x }}", "variable's name"),
    Refused("[[ -v ]]", "[[ -v {{ .x }} ]]", "variable's name"),
    Refused("test -v", "test -v {{ .x }}", "variable's name"),
    Refused("export NAME", "export {{ .x }}", "variable's name"),
    Refused("assignment name", "{{ .x }}=1", "variable's name"),
    Refused("declare -n", "declare -n ref={{ .x }}", "variable's name"),
    # a name reference: what is assigned to it names the variable it refers to
    Refused("declare -n, then assigned", 'declare -n r; r={{ .x }}; echo "$r"', "variable's name"),
    Refused("local -n, then appended", 'f() { local -n r; r+={{ .x }}; echo "$r"; }; f', "variable's name"),
    Refused("typeset -n, for list", "typeset -n r; for r in {{ .x }}; do :; done", "variable's name"),
    Refused("declare -n, read from a here-string", "declare -n r; read -r r <<< {{ .x }}", "variable's name"),
    Refused("declare -n, read from a pipe", "declare -n r; echo {{ .x }} | read -r r", "variable's name"),
    Refused("declare -n, printf -v", "declare -n r; printf -v r %s {{ .x }}", "variable's name"),
    # the word after `>&` (stdout) is expanded again as a file name when it is not a number
    Refused(">& target", "echo hello >& {{ .x }}", "`>&`"),
    Refused(">& target, glued", "echo hello >&{{ .x }}", "`&> VALUE`"),
    Refused(">& target, double quotes", 'echo hello >&"{{ .x }}"', "`> VALUE 2>&1`"),
    Refused(">& target, single quotes", "echo hello >&'{{ .x }}'", "`>&`"),
    Refused(">& target, prefix", "echo hello >&log{{ .x }}", "`>&`"),
    Refused(">& target, suffix", "echo hello >&{{ .x }}.log", "`>&`"),
    Refused("exec >&", "exec >&{{ .x }}", "`>&`"),
    Refused("1>& target", "echo hello 1>&{{ .x }}", "`>&`"),
    Refused(">& target of a block", "{ echo hello; } >&{{ .x }}", "`>&`"),
    Refused(">& target from $( )", 'echo hello >&"$(echo {{ .x }})"', "`>&`"),
    # what a coproc runs
    Refused("coproc", "coproc {{ .x }}; wait", CHOOSES),
    Refused("coproc with a block", "coproc N { {{ .x }}; }; wait", "`coproc`"),
    Refused("coproc with a loop", "coproc N while :; do eval {{ .x }}; done", "`coproc`"),
    Refused("coproc with a subshell", "coproc ( {{ .x }} ); wait", CHOOSES),
    Refused("setpriv", "setpriv --reuid 1000 {{ .x }} a", CHOOSES),
    Refused("setpriv after --", "setpriv --nnp -- {{ .x }}", CHOOSES),
    Refused("pkexec", "pkexec --user app {{ .x }}", CHOOSES),
    # what the grammar cannot read is not guessed
    Refused(
        "unbalanced control block", 'echo {{ if .x }}"{{ end }}a" {{ .x }}', "block opens or closes quotes"
    ),
    Refused("syntax error", 'echo "unterminated {{ .x }}', "grammar cannot read"),
]


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.name)
def test_unquotable_places_are_refused_at_validate(case: Refused, tmp_path: Path) -> None:
    path = workflow(tmp_path / "wf.yaml", case.command, case.parameters)
    with pytest.raises(ValidationError) as caught:
        analyse(load_workflow(path))
    assert case.message in caught.value.message
    assert caught.value.where == f"{path}:7"  # the step's `command` line
    # plan and run render with the same rules
    with pytest.raises(ValidationError, match="line [0-9]+ of the command"):
        compile_template(case.command).render({"x": "v"}, shell=True)


@pytest.mark.parametrize("key", sorted(HOSTILE))
def test_redirect_targets_in_their_safe_forms_are_expanded_once(key: str, tmp_path: Path) -> None:
    """`> VALUE 2>&1`, `&> VALUE`, `&>> VALUE`, `>| VALUE`, `2>&VALUE` and `<&VALUE` name a file
    (or fail): bash never expands the value again."""
    marker = tmp_path / "marker"
    value = HOSTILE[key].replace("{m}", str(marker))
    for command in [
        "echo hi > {{ .x }} 2>&1 || true",
        "echo hi &> {{ .x }} || true",
        "echo hi &>> {{ .x }} || true",
        "echo hi >| {{ .x }} || true",
        "echo hi 2>&{{ .x }} || true",
        "cat <&{{ .x }} || true",
        "cat 0<&{{ .x }} || true",
        "exec 3>&1; echo hi 3>&{{ .x }} || true",
    ]:
        result = bash(rendered(workflow(tmp_path / "wf.yaml", command), {"x": value}), tmp_path)
        assert result.returncode == 0, (command, result.stderr)
        assert not marker.exists(), command


def test_processor_placeholder_after_duplicating_redirect_is_refused() -> None:
    with pytest.raises(ValidationError, match="processor template: .*`>&`"):
        parse_processor("cat {input} >& {output}")
    parse_processor("cat {input} > {output} 2>&1")


ARITHMETIC = [
    ("$(( ))", 'echo "took $(( 10 - {{ .x }} ))s"', "took 7s\n"),
    ("(( ))", "(( n = {{ .x }} + 1 )); echo $n", "4\n"),
    ("let", 'let "n={{ .x }}*2"; echo $n', "6\n"),
    ("[[ -gt ]]", "[[ {{ .x }} -gt 2 ]] && echo big", "big\n"),
    ("subscript", 'a=(p q r s); echo "${a[{{ .x }}]}"', "s\n"),
    ("offset", 's=abcdef; echo "${s:{{ .x }}:2}"', "de\n"),
    ("c-style for", "for ((i=0; i<{{ .x }}; i++)); do printf %s $i; done; echo", "012\n"),
    ("declare -i", "declare -i n; n={{ .x }}+1; echo $n", "4\n"),
]


@pytest.mark.parametrize(("name", "command", "expected"), ARITHMETIC, ids=[a[0] for a in ARITHMETIC])
def test_arithmetic_takes_int_parameters_checked_as_numbers(
    name: str, command: str, expected: str, tmp_path: Path
) -> None:
    path = workflow(tmp_path / "wf.yaml", command, INT)
    result = bash(rendered(path, {"x": "3"}), tmp_path)
    assert result.stdout.decode() == expected, result.stderr
    marker = tmp_path / "marker"
    with pytest.raises(ValidationError, match="must be an int"):
        rendered(path, {"x": f"a[$(touch {marker})]"})
    # a value that reaches the command otherwise is checked when rendered
    with pytest.raises(ValidationError, match="is not a plain number"):
        compile_template(command).render({"x": f"a[$(touch {marker})]"}, shell=True)
    assert not marker.exists()


def test_arithmetic_refuses_untyped_and_captured_values(tmp_path: Path) -> None:
    command = "echo $(( {{ .outputs.count }} + 1 ))"
    path = tmp_path / "wf.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "q",
                "steps": [
                    {"name": "count", "command": "echo 3", "capture_output": "count"},
                    {"name": "use", "command": command},
                ],
            }
        )
    )
    with pytest.raises(ValidationError, match="lands in arithmetic.*declare `outputs`"):
        analyse(load_workflow(path))
    float_path = workflow(
        tmp_path / "f.yaml", "echo $(( {{ .x }} ))", [{"name": "x", "type": "float", "default": 1}]
    )
    analyse(load_workflow(float_path))  # `type: float` is a number too


def test_option_values_are_refused_at_bind_unless_the_pattern_allows_them(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    files = ["--checkpoint=1", f"--checkpoint-action=exec=touch {marker}", "a.txt"]
    command = f"tar -cf {tmp_path}/out.tar -C {tmp_path}/data {{{{ .files }}}}"
    params = [{"name": "files", "type": "list", "default": ["a.txt"]}]
    path = workflow(tmp_path / "wf.yaml", command, params)
    with pytest.raises(ValidationError) as caught:
        rendered(path, {"files": files})
    message = caught.value.message
    assert "parameter `files`" in message and "starts with `-`" in message and "`tar`" in message
    assert "validation.pattern" in message and "`--`" in message
    assert bash(rendered(path, {"files": ["a.txt"]}), tmp_path).returncode == 0
    # a variable made from the parameter is the parameter
    via = workflow(
        tmp_path / "via.yaml", "tar -cf out.tar {{ .args }}", params, variables={"args": "{{ .files }}"}
    )
    with pytest.raises(ValidationError, match="parameter `files`"):
        rendered(via, {"files": files})
    # `--` ends the options: the same values are file names
    ended = workflow(tmp_path / "ended.yaml", command.replace("{{ .files }}", "-- {{ .files }}"), params)
    result = bash(rendered(ended, {"files": files}), tmp_path)
    assert result.returncode != 0 and b"Cannot stat" in result.stderr
    # a pattern that allows a leading `-` lets the author pass options
    flags = [{"name": "flags", "default": "--verbose", "validation": {"pattern": "^--[a-z]+$"}}]
    allowed = workflow(tmp_path / "allowed.yaml", "printf '%s\\n' {{ .flags }}", flags)
    assert bash(rendered(allowed, {"flags": "--quiet"}), tmp_path).stdout == b"--quiet\n"
    assert not marker.exists()


def test_option_values_from_outputs_are_refused_when_rendered(tmp_path: Path) -> None:
    template = compile_template("tar -cf out.tar {{ .outputs.listing }}", where="wf.yaml:9")
    with pytest.raises(
        ValidationError, match="starts with `-`, so `tar` would take it for an option"
    ) as caught:
        template.render({"outputs": {"listing": "--checkpoint-action=exec=sh x"}}, shell=True)
    assert caught.value.where == "wf.yaml:9"
    # each item of a list starts a word, wherever the value starts
    with pytest.raises(ValidationError, match="starts with `-`"):
        compile_template("tar -cf out.tar x{{ .files }}").render({"files": ["a", "-x"]}, shell=True)


def test_a_value_cannot_end_a_here_document_early(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    for command, value in [
        ("cat <<EOF\n{{ .x }}\nEOF", f"a\nEOF\ntouch {marker}"),
        ("cat <<EOF\nE{{ .x }}\nEOF", f"OF\ntouch {marker}"),
        ("cat <<EOF\n{{ .x }}F\nEOF", "EO"),
        ("cat <<EOF\n{{ .x }}{{ .x }}\nEOF", "E"),
        ("cat <<-EOF\n\t{{ .x }}\nEOF", "\tEOF"),
    ]:
        with pytest.raises(ValidationError, match="ends its here-document early"):
            compile_template(command).render({"x": value}, shell=True)
    assert (
        compile_template("cat <<EOF\n{{ .x }}F\nEOF").render({"x": "EOX"}, shell=True)
        == "cat <<EOF\nEOXF\nEOF"
    )


def test_a_here_document_line_starting_with_a_value_plans_and_runs(tmp_path: Path) -> None:
    out = tmp_path / "f"
    path = workflow(
        tmp_path / "wf.yaml",
        f"cat > {out} <<EOF\n{{{{ .config }}}}\nEOF",
        [{"name": "config", "default": "a: b"}],
    )
    assert bash(rendered(path, {"config": "port: $PORT"}), tmp_path).returncode == 0
    assert out.read_text() == "port: $PORT\n"


@given(
    value=st.lists(
        st.one_of(
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
            st.sampled_from(
                [
                    "$(touch M)",
                    "`touch M`",
                    "';touch M;'",
                    '";touch M;"',
                    "\nEOF\n",
                    "a[$(touch M)]",
                    "\\",
                    "$'",
                    "--x",
                ]
            ),
        ),
        max_size=5,
    ).map("".join),
    case=st.sampled_from(RUNS),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_random_values_through_every_quoting_context(value: str, case: Runs, tmp_path: Path) -> None:
    marker = tmp_path / "M"
    value = value.replace("M", str(marker))
    path = workflow(tmp_path / f"{abs(hash(case.name))}.yaml", case.command, _parameters(case))
    try:
        command = rendered(path, _sets(case, value))
    except ValidationError as err:  # only a value that would be an option or end a document
        assert OPTION in err.message or EOF_LINE in err.message, err.message
        return
    result = bash(command, tmp_path)
    assert result.stdout.decode() == case.expect(value), command
    assert not marker.exists(), command


# --- file processors: the same analysis ------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("sh -c 'gzip -c {input} > {output}'", "sh -c '... \"$1\" ...' _ {input}"),
        ('bash -c "wc -l {input}"', "`bash -c`"),
        ("eval cat {input}", "`eval`"),
        ("echo $(( {name} ))", "arithmetic"),
        ("cat `echo {input}`", "backticks"),
    ],
)
def test_processor_commands_that_run_a_second_shell_are_refused(template: str, message: str) -> None:
    with pytest.raises(ValidationError, match="processor template") as caught:
        parse_processor(template)
    assert message in caught.value.message


def test_processor_safe_form_and_option_like_file_names(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    src = tmp_path / "in"
    src.mkdir()
    names = [f"a$(touch {marker.name})", f"--checkpoint-action=exec=touch {marker.name}", "plain"]
    for name in names:
        (src / name).write_text(name)
    safe = parse_processor('sh -c \'cat "$1" > "$2"\' _ {input} {output}')
    for file in iter_inputs([str(src)]):
        outcome = attempt(file, safe, output_dir=tmp_path / "out", timeout=30, print_="x")
        assert outcome.status == "completed", outcome.error
        assert (tmp_path / "out" / file.path.name).read_text() == file.path.name
    naming = parse_processor("printf '%s\\n' {name} > {output}")
    outcomes = {
        file.path.name: attempt(file, naming, output_dir=tmp_path / "named", timeout=30, print_="x")
        for file in iter_inputs([str(src)])
    }
    refused = outcomes[names[1]]
    assert refused.status == "failed" and "starts with `-`" in refused.error and "{name}" in refused.error
    assert outcomes["plain"].status == "completed"
    assert not marker.exists() and not (Path.cwd() / marker.name).exists()


# --- differential fuzz: random commands, bash is the judge ----------------------------------

FUZZ_VALUES = [
    "$(touch M)",
    "`touch M`",
    "';touch M;'",
    '";touch M;"',
    "a[$(touch M)]",
    "\nEOF\ntouch M\nEOF\n",
    "1;touch M",
    "x\\",
    "--checkpoint-action=exec=touch M",
    "EOF",
]


@given(seed=st.integers(0, 2**32), value=st.sampled_from(FUZZ_VALUES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_random_commands_never_run_a_value(seed: int, value: str, tmp_path: Path) -> None:
    """Whatever command is written, a value is refused or bash treats it as data."""
    source = Generator(seed).command()
    if VALUE not in source:
        source += " " + VALUE
    marker = tmp_path / "M"
    try:
        command = compile_template(source).render({"x": value.replace("M", str(marker))}, shell=True)
    except ValidationError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        run_bash(command, tmp_path, 10)
    assert not marker.exists(), (source, command)


# --- what only the rendered command shows -----------------------------------------------------


def test_blocks_and_raw_text_are_read_again_when_rendered(tmp_path: Path) -> None:
    """`{{ if }}` blocks and `| raw` text can put a value where the template alone does not
    show it: the rendered command is read again before any value is quoted."""
    marker = tmp_path / "M"
    hostile = {"x": f"$(touch {marker})", "a": True, "p": "trap"}
    for source, message in [
        ("{{ if .a }}eval{{ else }}echo{{ end }} {{ .x }}", "`eval` runs its arguments"),
        ("{{ .p | raw }} {{ .x }} EXIT", "`trap` runs its action"),
        ("{{ if .a }}declare -i n; {{ end }}n={{ .x }}", "lands in arithmetic"),
    ]:
        with pytest.raises(ValidationError, match=message):
            compile_template(source).render(hostile, shell=True)
    path = workflow(
        tmp_path / "wf.yaml",
        "{{ if .a }}eval{{ else }}echo{{ end }} {{ .x }}",
        [{"name": "x", "default": "v"}, {"name": "a", "type": "bool", "default": False}],
    )
    assert bash(rendered(path, {"x": hostile["x"]}), tmp_path).stdout.decode() == hostile["x"] + "\n"
    with pytest.raises(ValidationError, match="`eval` runs its arguments"):
        rendered(path, {"x": hostile["x"], "a": True})
    assert not marker.exists()


def test_a_here_document_inside_a_substitution_cannot_be_ended_by_a_value(tmp_path: Path) -> None:
    """Inside `$( )` bash ends a here-document at a line that starts with its delimiter (`EOF)`)."""
    marker = tmp_path / "M"
    for command in [
        'x=$(cat <<EOF\n{{ .x }}\nEOF\n)\nprintf "%s\\n" "$x"',
        "echo $(f() { cat <<EOF\n{{ .x }}\nEOF\n}; f)",
    ]:
        path = workflow(tmp_path / "wf.yaml", command)
        for value in [f"a\nEOF)\ntouch {marker}\necho ", f"EOFx\ntouch {marker}"]:
            with pytest.raises(ValidationError, match="ends its here-document early"):
                rendered(path, {"x": value})
        assert not bash(rendered(path, {"x": "a\n EOF)"}), tmp_path).returncode
    assert not marker.exists()


def test_a_nul_byte_is_refused_wherever_a_value_comes_from(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="NUL byte"):
        rendered(workflow(tmp_path / "wf.yaml", "printf '%s\\n' {{ .x }}"), {"x": "a\x00b"})
    with pytest.raises(ValidationError, match="holds a NUL byte"):
        compile_template("printf '%s\\n' {{ .outputs.o }}").render({"outputs": {"o": "a\x00b"}}, shell=True)


# --- a value choosing what runs -------------------------------------------------------------

CHOICE = [{"name": "cmd", "default": "echo", "validation": {"enum": ["echo", "/bin/echo"]}}, {"name": "x"}]


def test_a_command_from_an_enum_list_runs_with_its_arguments_as_data(tmp_path: Path) -> None:
    """With `validation.enum`, the author wrote every program a value may name: the one chosen
    runs, its arguments stay data, and a value off the list is refused at bind."""
    marker = tmp_path / "M"
    hostile = f"$(touch {marker}); touch {marker}"
    for command in ["{{ .cmd }} {{ .x }}", "true && timeout 5 {{ .cmd }} {{ .x }}"]:
        path = workflow(tmp_path / "wf.yaml", command, CHOICE)
        for chosen in ["echo", "/bin/echo"]:
            result = bash(rendered(path, {"cmd": chosen, "x": hostile}), tmp_path)
            assert result.stdout.decode() == hostile + "\n"
        for other in ["eval", "/tmp/evil.sh", "sh", "sudo"]:
            with pytest.raises(ValidationError, match="is not one of"):
                rendered(path, {"cmd": other, "x": f"touch {marker}"})
    assert not marker.exists()


def test_a_bool_parameter_may_run_true_or_false(tmp_path: Path) -> None:
    path = workflow(
        tmp_path / "wf.yaml",
        "if {{ .flag }}; then echo yes; else echo no; fi",
        [{"name": "flag", "type": "bool", "default": False}],
    )
    assert bash(rendered(path, {}), tmp_path).stdout == b"no\n"
    assert bash(rendered(path, {"flag": "true"}), tmp_path).stdout == b"yes\n"


@pytest.mark.parametrize(
    ("allowed", "message"),
    [
        (["echo", "eval"], "'eval', which runs its arguments as code"),
        (["echo", "sudo"], "'sudo', which runs its arguments"),
        (["echo", "/usr/bin/env"], "'/usr/bin/env', which runs"),
        (["echo", "xargs"], "'xargs', which"),
        (["echo", "bash"], "'bash', which"),
        (["echo", "python3.12"], "'python3.12', which"),
        (["echo", "source"], "'source', which"),
        (["echo", "."], "'.', which"),
        (["echo", "command"], "'command', which"),
        (["echo", "builtin"], "'builtin', which"),
        (["echo", "exec"], "'exec', which"),
        (["echo", "ssh"], "'ssh', which"),
        (["echo", "a b"], "not a plain program name"),
        (["echo", "-x"], "not a plain program name"),
        (["echo", 1], "not a plain program name"),
    ],
)
def test_an_enum_list_naming_a_program_that_runs_its_arguments_is_refused(
    allowed: list[Any], message: str, tmp_path: Path
) -> None:
    path = workflow(
        tmp_path / "wf.yaml",
        "{{ .cmd }} {{ .x }}",
        [{"name": "cmd", "default": "echo", "validation": {"enum": allowed}}, {"name": "x"}],
    )
    with pytest.raises(ValidationError, match="chooses what runs") as caught:
        analyse(load_workflow(path))
    assert message in caught.value.message
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "command:" in text)
    assert caught.value.where == f"{path}:{line}"


@pytest.mark.parametrize(
    ("command", "parameters"),
    [
        ("{{ .cmd | raw }} a", CHOICE),  # `| raw` hides the value from the re-read
        ("{{ .cmd | lower }} a", CHOICE),  # a filter may make another name
        ("{{ .tool }} a", [{"name": "tool", "default": "echo", "validation": {"pattern": "^[a-z]+$"}}]),
        ("{{ .outputs.o }} a", [{"name": "x"}]),
        ("{{ .cmds }} a", [{"name": "cmds", "type": "list", "validation": {"enum": ["echo"]}}]),
    ],
)
def test_only_a_plain_enum_parameter_may_choose_what_runs(
    command: str, parameters: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = workflow(tmp_path / "wf.yaml", command, parameters)
    with pytest.raises(ValidationError, match="chooses what runs.*validation: \\{enum"):
        analyse(load_workflow(path))


def test_a_value_choosing_what_runs_is_refused_when_rendered(tmp_path: Path) -> None:
    """Where only the rendered command shows a value choosing what runs (`| raw` text before it),
    the value must be one of an enum list's programs: a value from elsewhere is refused."""
    marker = tmp_path / "M"
    for context in [
        {"p": "sudo", "x": "eval", "y": f"touch {marker}"},
        {"p": "", "x": "eval", "y": f"touch {marker}"},
    ]:
        with pytest.raises(ValidationError, match="chooses what runs"):
            compile_template("{{ .p | raw }} {{ .x }} {{ .y }}").render(context, shell=True)
    with pytest.raises(ValidationError, match="chooses what runs"):
        compile_template("{{ if .a }}sudo {{ end }}{{ .x }}").render({"a": True, "x": "eval"}, shell=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    "template", ["{input} -v", "xargs {name} < {input}", "bash {input}", "source {input}", "sudo {input}"]
)
def test_processor_placeholders_cannot_choose_what_runs(template: str) -> None:
    with pytest.raises(ValidationError, match="processor template: .*chooses what runs"):
        parse_processor(template)
