"""What programs do with their arguments, for shellquote: which run one as code (`sh -c`,
`eval`, `ssh host CMD`), which read code on standard input (`bash <<EOF`, `| sh`), which take
variable names (`read`, `unset`, `printf -v`). Pure.

A command is given as its words after quote removal (`None` for a word holding a value or an
expansion), the command's name first. Interpreters with a code option are found anywhere
among the words (`sudo -u app bash -c ...`); builtins and programs whose operands are code
(`eval`, `trap`, `awk`) are found where a command starts: the name, and what each wrapper runs
after its options (`command eval`, `timeout -- 5 CMD`, `env -i A=1 CMD`, `find -exec CMD`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

Words = list[str | None]


class Refused(Exception):
    """No quoting makes a value safe here; the message says why and gives the safe form."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class _Interpreter:
    code_flags: str  # short flags whose argument is code (`-c`, `-e`)
    with_argument: frozenset[str] = frozenset()  # options that take the next word
    not_code: frozenset[str] = frozenset()  # options after which standard input is data (`-m`)
    code_long: frozenset[str] = frozenset()  # long options whose argument is code (`--eval`)
    program_operand: bool = False  # awk, sed: the first operand is the program, unless an option gave it
    script_flags: str = ""  # short flags whose argument names the program's file (`awk -f`)
    sandbox: str = ""  # the option that takes away running commands and writing files


SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "yash", "posh"})
_SHELL = _Interpreter("c", frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"}))
_AWK = _Interpreter(
    "e",
    frozenset({"-F", "-v", "-i", "-l", "-W", "--field-separator", "--assign", "--include", "--load"}),
    code_long=frozenset({"--source"}),
    program_operand=True,
    script_flags="fE",
    sandbox="--sandbox",
)
_SED = _Interpreter(
    "e",
    frozenset({"-l", "--line-length"}),
    code_long=frozenset({"--expression"}),
    program_operand=True,
    script_flags="f",
    sandbox="--sandbox",
)
_NODE = _Interpreter(
    "ep", frozenset({"-r", "--require", "--import"}), code_long=frozenset({"--eval", "--print"})
)
_INTERPRETERS = {
    **dict.fromkeys(SHELLS, _SHELL),
    "python": _Interpreter("c", frozenset({"-W", "-X"}), frozenset({"-m"})),
    "perl": _Interpreter("eE", frozenset({"-I", "-M", "-m"})),
    "ruby": _Interpreter("e", frozenset({"-I", "-r"})),
    "node": _NODE,
    "nodejs": _NODE,
    "php": _Interpreter("rBRE", frozenset({"-c", "-d", "-z"})),
    "lua": _Interpreter("e", frozenset({"-l"})),
    "luajit": _Interpreter("e", frozenset({"-l"})),
    "Rscript": _Interpreter("e"),
    "julia": _Interpreter("eE", code_long=frozenset({"--eval", "--print"})),
    **dict.fromkeys(("awk", "gawk", "mawk", "nawk"), _AWK),
    **dict.fromkeys(("sed", "gsed"), _SED),
}
# Programs that run one option's argument through a shell: `su -c CMD`.
_COMMAND_OPTION = {"su": "--command", "runuser": "--command", "flock": "--command", "script": "--command"}
_SSH_OPTIONS_WITH_ARGUMENT = set("BbcDEeFIiJLlmOoPpQRSWw")
# Builtins whose operands are variable names, and their options that take another argument.
_NAME_BUILTINS = {
    "read": {"-p", "-d", "-t", "-n", "-N", "-u", "-i"},
    "mapfile": {"-d", "-n", "-O", "-s", "-u", "-C", "-c"},
    "readarray": {"-d", "-n", "-O", "-s", "-u", "-C", "-c"},
    "unset": set(),
}
# Names a program reads its standard input through, given as its script file.
STDIN_FILES = frozenset({"-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"})


@dataclass(frozen=True)
class _Wrapper:
    """A program that runs the command written after its options (`timeout 5 CMD`)."""

    with_argument: frozenset[str] = frozenset()  # options that take the next word
    operands: int = 0  # words before the command (`timeout DURATION`, `chroot DIR`)
    assignments: bool = False  # NAME=VALUE words before the command (`env`)


def _opts(*names: str) -> frozenset[str]:
    return frozenset(names)


_WRAPPERS = {
    "command": _Wrapper(),
    "builtin": _Wrapper(),
    "exec": _Wrapper(_opts("-a")),
    "time": _Wrapper(_opts("-f", "-o", "--format", "--output")),
    "nohup": _Wrapper(),
    "setsid": _Wrapper(),
    "unbuffer": _Wrapper(),
    "busybox": _Wrapper(),
    "fakeroot": _Wrapper(_opts("-l", "-s", "-i", "--lib", "--faked")),
    "nice": _Wrapper(_opts("-n", "--adjustment")),
    "ionice": _Wrapper(_opts("-c", "-n", "-p", "-P", "-u", "--class", "--classdata")),
    "chrt": _Wrapper(_opts("-T", "-P", "-D", "--sched-runtime", "--sched-period", "--sched-deadline"), 1),
    "taskset": _Wrapper(operands=1),
    "chroot": _Wrapper(_opts("--groups", "--userspec"), 1),
    "timeout": _Wrapper(_opts("-s", "-k", "--signal", "--kill-after"), 1),
    "stdbuf": _Wrapper(_opts("-i", "-o", "-e", "--input", "--output", "--error")),
    "env": _Wrapper(_opts("-u", "-C", "--unset", "--chdir"), assignments=True),
    "sudo": _Wrapper(
        _opts(
            "-u",
            "-g",
            "-C",
            "-D",
            "-h",
            "-p",
            "-r",
            "-t",
            "-U",
            "-T",
            "-R",
            "--user",
            "--group",
            "--close-from",
            "--chdir",
            "--host",
            "--prompt",
            "--role",
            "--type",
            "--other-user",
            "--command-timeout",
            "--chroot",
        )  # fmt: skip
    ),
    "doas": _Wrapper(_opts("-u", "-C")),
    "runuser": _Wrapper(_opts("-u", "-g", "-G", "--user", "--group", "--supp-group")),
    "xargs": _Wrapper(
        _opts(
            "-I",
            "-d",
            "-E",
            "-L",
            "-n",
            "-P",
            "-s",
            "-a",
            "--arg-file",
            "--delimiter",
            "--eof",
            "--max-lines",
            "--max-args",
            "--max-procs",
            "--max-chars",
            "--process-slot-var",
        )  # fmt: skip
    ),
    "flock": _Wrapper(_opts("-w", "-E", "--timeout", "--wait", "--conflict-exit-code"), 1),
    "strace": _Wrapper(_opts("-o", "-e", "-p", "-s", "-u", "-E", "-a", "-b", "-I", "-O", "-S", "-X", "-P")),
    "ltrace": _Wrapper(
        _opts("-o", "-e", "-p", "-s", "-u", "-a", "-l", "-n", "-w", "-x", "-A", "-D", "-F", "-L")
    ),
    "nsenter": _Wrapper(_opts("-t", "-S", "-G", "--target", "--setuid", "--setgid")),
    "unshare": _Wrapper(_opts("-S", "-G", "--setuid", "--setgid")),
    "prlimit": _Wrapper(_opts("-p", "--pid")),
    "firejail": _Wrapper(),
    "coproc": _Wrapper(),
    "pkexec": _Wrapper(_opts("--user")),
    "setpriv": _Wrapper(
        _opts(
            "--ambient-caps",
            "--inh-caps",
            "--bounding-set",
            "--ruid",
            "--euid",
            "--rgid",
            "--egid",
            "--reuid",
            "--regid",
            "--groups",
            "--securebits",
            "--pdeathsig",
            "--selinux-label",
            "--apparmor-profile",
            "--landlock-access",
            "--landlock-rule",
            "--seccomp-filter",
        )  # fmt: skip
    ),
    "caffeinate": _Wrapper(_opts("-t", "-w")),
}


def program(word: str | None) -> str:
    name = os.path.basename(word) if word else ""
    return "python" if name.startswith("python") and name[6:].replace(".", "").isdigit() else name


def _interpreter(word: str | None) -> _Interpreter | None:
    return _INTERPRETERS.get(program(word))


def _is_option(word: str | None) -> bool:
    return word is not None and len(word) > 1 and word[0] == "-"


def command_starts(words: Words, texts: list[str]) -> list[int]:
    """The indexes where a command starts: its name, and the command each wrapper runs
    (`timeout -- 5 CMD`, `env -i A=1 CMD`, `sudo -u app CMD`, `find ... -exec CMD`, `watch -x CMD`).
    A value or an expansion among a wrapper's options may be the command too."""
    starts: list[int] = []
    queue = [0]
    while queue:
        at = queue.pop()
        if at >= len(words) or at in starts:
            continue
        starts.append(at)
        name = program(words[at])
        if name == "find":
            queue += [
                j + 1 for j in range(at + 1, len(words)) if words[j] in ("-exec", "-execdir", "-ok", "-okdir")
            ]
        elif name == "watch" and any(w in ("-x", "--exec") for w in _options(words, at)):
            queue += _wrapped(words, at, _Wrapper(_opts("-n", "-q", "--interval", "--equexit")))
        elif name in _WRAPPERS:
            queue += _wrapped(words, at, _WRAPPERS[name])
    return sorted(starts)


def _options(words: Words, at: int) -> list[str]:
    """The option words right after `words[at]`, up to the first operand or `--`."""
    found = []
    for word in words[at + 1 :]:
        if word is None or not _is_option(word) or word == "--":
            break
        found.append(word)
    return found


def _wrapped(words: Words, at: int, spec: _Wrapper) -> list[int]:
    """Where the command run by the wrapper at `words[at]` may start."""
    found = []
    j = at + 1
    while j < len(words):
        word = words[j]
        if word is None:  # a value (not an option: those are refused) or an expansion that may vanish
            found.append(j)
            j += 1
        elif word == "--":
            j += 1
            break
        elif word in spec.with_argument:
            j += 2
        elif _is_option(word) or (spec.assignments and "=" in word and word.split("=")[0].isidentifier()):
            j += 1
        else:
            break
    return [*found, j + spec.operands]


def _invocation(words: Words, texts: list[str], at: int, spec: _Interpreter) -> tuple[set[int], bool]:
    """For the interpreter at `words[at]`: the indexes of the words it may run as code (`-c
    WORD`, `-e WORD`, awk's program; an unquoted expansion may vanish, so the words after it
    may be the code too), and whether it reads its program on standard input (no script
    operand, or `-` or `/dev/stdin`)."""
    code: set[int] = set()
    first_operand = False  # a shell's `-c`: the first operand is the script
    given = False  # an option gave the program or its file
    stdin = False
    j = at + 1
    while j < len(words):
        word = words[j]
        if word is None:
            if texts[j].startswith("-") and spec.code_flags:  # `-e"...VALUE..."`: may be code attached
                code.add(j)
            elif first_operand or (spec.program_operand and not given):
                return code | set(_one_word_from(words, texts, j)), False
            elif texts[j][:1] in ("'", '"', "<", ">"):
                break  # quoted text or a process substitution: the script operand
            j += 1  # a value or an expansion: it may be an option, read on
            continue
        if word == "--":
            j += 1
            break
        if spec.sandbox and word == spec.sandbox:
            return set(), False
        if word in spec.not_code:
            return set(), False
        if word in spec.with_argument:
            j += 2
            continue
        if word.startswith("--"):
            name, eq, _ = word.partition("=")
            if name in spec.code_long:
                given = True
                code |= {j} if eq else set(_one_word_from(words, texts, j + 1))
                j += 1 if eq else 2
                continue
            j += 1
            continue
        if len(word) > 1 and word[0] in "-+":
            step = 1
            for k, flag in enumerate(word[1:], start=2):
                if word[0] != "-":
                    break
                if flag in spec.code_flags:
                    given = True
                    if spec is _SHELL:
                        first_operand = True
                    elif word[k:]:
                        code.add(j)  # `-e'code'`: the rest of the word is the program
                    else:
                        code |= set(_one_word_from(words, texts, j + 1))
                        step = 2
                    if spec is not _SHELL:
                        break
                elif flag in spec.script_flags:
                    given = True
                    script = word[k:] or (words[j + 1] if j + 1 < len(words) else None)
                    stdin = stdin or script in STDIN_FILES
                    step = 1 if word[k:] else 2
                    break
            stdin = stdin or (spec is _SHELL and "s" in word[1:] and word[0] == "-")
            j += step
            continue
        break
    if first_operand:
        return code | set(_one_word_from(words, texts, j)) if j < len(words) else code, False
    if spec.program_operand:
        if not given and j < len(words):
            code |= set(_one_word_from(words, texts, j))
        return code, stdin
    if code:
        return code, False
    return code, stdin or j >= len(words) or words[j] in STDIN_FILES


def _interpreter_message(word: str | None, spec: _Interpreter) -> str:
    shown = os.path.basename(word or "")
    if spec is _AWK:
        return (
            f"an `{shown}` program can run commands (`system()`, pipes), so a value cannot be part of it "
            f"— pass it as a variable instead: {shown} -v name=VALUE '... name ...'"
        )
    if spec is _SED:
        return (
            f"a `{shown}` script can run commands (`e`, `s///e`) and write files (`w`), so a value cannot "
            f"be part of it — write `{shown} --sandbox`, or use awk -v name=VALUE '...'"
        )
    flag = f"-{spec.code_flags[0]}"
    safe = (
        f"{shown} -c '... \"$1\" ...' _ VALUE"
        if spec is _SHELL
        else f"{shown} {flag} '...' VALUE, reading it from the program's arguments"
    )
    return (
        f"`{shown} {flag}` runs its argument as code, where a value would be code — "
        f"pass the value as an argument instead: {safe}"
    )


def _one_word_from(words: Words, texts: list[str], j: int) -> range:
    """The words from `j` that may be the next argument: an unquoted expansion may vanish."""
    last = j
    while last < len(words) and words[last] is None and texts[last][:1] not in ("'", '"'):
        last += 1
    return range(j, min(last + 1, len(words)))


def _option_arguments(
    words: Words, texts: list[str], at: int, letters: str, long: frozenset[str]
) -> set[int]:
    """The words that are arguments of the options `letters` (`-C CMD`, `-CCMD`, `-aC CMD`) or
    `long` (`--command CMD`, `--command=CMD`) of the command at `words[at]`."""
    found: set[int] = set()
    for j in range(at + 1, len(words)):
        word = words[j]
        if word is None:
            if texts[j][:1] == "-" and any(c in texts[j][1:3] for c in letters):
                found.add(j)  # `-C"...VALUE..."`
            continue
        if word == "--":
            break
        name, eq, _ = word.partition("=")
        if name in long:
            found |= {j} if eq else set(_one_word_from(words, texts, j + 1))
        elif word[:1] == "-" and not word.startswith("--"):
            for k, flag in enumerate(word[1:], start=2):
                if flag in letters:
                    found |= {j} if word[k:] else set(_one_word_from(words, texts, j + 1))
                    break
    return found


def _operands(
    words: Words, texts: list[str], at: int, with_argument: frozenset[str] = frozenset()
) -> list[int]:
    """The operands of the command at `words[at]`: the words after its options."""
    j = at + 1
    while j < len(words):
        word = words[j]
        if word == "--":
            j += 1
            break
        if word in with_argument:
            j += 2
        elif word is not None and _is_option(word):
            j += 1
        else:
            break
    return list(range(j, len(words)))


# What bash runs as code later, whatever its quoting: a variable's text it expands as a prompt
# or a file name (`$( )` runs), and the values programs run with a shell.
CODE_VARIABLES = frozenset(
    {
        "PS0", "PS1", "PS2", "PS3", "PS4", "PROMPT_COMMAND", "BASH_ENV", "ENV",
        "GIT_SSH_COMMAND", "GIT_EDITOR", "GIT_PAGER", "PAGER", "EDITOR", "VISUAL", "MANPAGER",
        "LESSOPEN", "LESSCLOSE", "SUDO_EDITOR", "SYSTEMD_PAGER",
    }
)  # fmt: skip
# Variables bash gives the integer attribute: assigning to one evaluates arithmetic.
INTEGER_VARIABLES = frozenset({"RANDOM", "SRANDOM", "OPTIND", "HISTCMD"})


def code_variable_message(name: str) -> str:
    return (
        f"`{name}` is run or expanded as code later (`$( )` in it runs), where a value would be code — "
        f"write it literally and let it name a variable that holds the value: v=VALUE; {name}='... $v ...'"
    )


_TRAP = (
    "`trap` runs its action as shell code when the signal comes, where a value would be code — "
    "keep the action literal and let it read a variable: v=VALUE; trap 'echo \"$v\"' EXIT"
)
_EVAL = "`eval` runs its arguments as shell code, where a value would be code — use the value directly, without eval"


def _code_words(words: Words, texts: list[str], at: int) -> tuple[set[int], str]:
    """The words the command starting at `words[at]` runs as code, and why, with the safe form."""
    name = program(words[at])
    after = set(range(at + 1, len(words)))
    if name == "eval":
        return after, _EVAL
    if name == "trap":
        operands = _operands(words, texts, at)
        first = set(_one_word_from(words, texts, operands[0])) if operands else set()
        return first, _TRAP
    if name in ("alias", "bind"):
        return after, (
            f"`{name}` defines shell code that runs later, where a value would be code — "
            'define a function that reads its arguments instead: f() { ... "$1" ...; }'
        )
    if name in ("compgen", "complete"):
        return _option_arguments(words, texts, at, "CFW", frozenset()), (
            f"`{name} -W`, `-C` and `-F` run or expand their argument as shell code, where a value would "
            f"be code — write the word list literally, naming a variable: v=VALUE; {name} -W '$v'"
        )
    if name in ("mapfile", "readarray"):
        return _option_arguments(words, texts, at, "C", frozenset()), (
            f"`{name} -C` runs its callback as shell code, where a value would be code — "
            "keep the callback literal and let it read a variable"
        )
    if name == "watch":
        return after, (
            "`watch` runs its arguments with `sh -c`, where a value would be code — "
            "watch -x sh -c '... \"$1\" ...' _ VALUE"
        )
    if name == "sg":
        return set(_operands(words, texts, at)[1:]), (
            "`sg` runs its command with `sh -c`, where a value would be code — "
            "run the program directly instead: sudo -g GROUP -- PROGRAM VALUE"
        )
    if name == "parallel":
        ends = [j for j in range(at + 1, len(words)) if words[j] in (":::", "::::", ":::+", "::::+")]
        return set(range(at + 1, ends[0] if ends else len(words))), (
            "`parallel` runs its command words with a shell, where a value would be code — "
            "pass values as its inputs instead: parallel CMD {} ::: VALUE"
        )
    if name == "env":
        return _option_arguments(words, texts, at, "S", frozenset({"--split-string"})), (
            "`env -S` splits its argument into a command line, where a value would be code — "
            "write each word separately: env PROGRAM VALUE"
        )
    if name in ("sudo", "doas") and any(
        w in ("--shell", "--login") or (w[1:2] != "-" and ("s" in w[1:] or "i" in w[1:]))
        for w in _options(words, at)
    ):
        return after, (
            f"`{name} -s` and `-i` run the command with a shell, where a value would be code — "
            f"run the program directly: {name} -- PROGRAM VALUE"
        )
    spec = _interpreter(words[at])
    if spec is not None and spec.program_operand:
        return _invocation(words, texts, at, spec)[0], _interpreter_message(words[at], spec)
    return set(), ""


def _check_code_word(words: Words, texts: list[str], start: int, at: int) -> None:
    code, why = _code_words(words, texts, start)
    if at in code:
        raise Refused(why)
    if program(words[start]) == "env" and "=" in texts[at]:
        name = texts[at].split("=", 1)[0]
        if name in CODE_VARIABLES and at < (_wrapped(words, start, _WRAPPERS["env"])[-1]):
            raise Refused(code_variable_message(name))


def _ssh_command(words: Words, at: int) -> tuple[int, int | None]:
    """For ssh at `words[at]`: the index of the host, and of the first word of the remote command."""
    j = at + 1
    while j < len(words):
        word = words[j]
        if word == "--":
            j += 1
            break
        if word is not None and word.startswith("-") and len(word) > 1:
            j += 2 if word[-1] in _SSH_OPTIONS_WITH_ARGUMENT and len(word) == 2 else 1
            continue
        break
    return j, (j + 1 if j + 1 < len(words) else None)


def reads_code_on_stdin(words: Words, texts: list[str]) -> str:
    """The program that runs its standard input as code (`bash`, `ssh host`, `python3 -`,
    `source /dev/stdin`, `xargs sh -c`), or ""."""
    for start in command_starts(words, texts):
        name = program(words[start])
        if name in ("source", ".") and start + 1 < len(words) and words[start + 1] in STDIN_FILES:
            return name
        if name == "xargs":
            inner = [s for s in command_starts(words, texts) if s > start]
            replace = any(
                (w or "").startswith(("-I", "-i", "--replace"))
                for w in words[start + 1 : inner[0] if inner else None]
            )
            for s in inner:
                spec = _interpreter(words[s])
                if spec is not None:
                    code, _ = _invocation(words, texts, s, spec)
                    has_flag = any(f in (w or "") for w in _options(words, s) for f in spec.code_flags)
                    if replace and code or (has_flag or spec.program_operand) and not code:
                        return "xargs"
                if program(words[s]) in ("eval", "watch", "parallel"):
                    return "xargs"
    for i, word in enumerate(words):
        spec = _interpreter(word)
        if spec is not None:
            return os.path.basename(word or "") if _invocation(words, texts, i, spec)[1] else ""
        if program(word) == "ssh":
            return "ssh" if _ssh_command(words, i)[1] is None else ""
    return ""


def stdin_script_hint(reader: str) -> str:
    """How to give values to a program that reads its script on standard input."""
    if reader == "ssh":
        return "keep values out of a remote script: run a script installed on the host and send values on its standard input"
    if reader in ("source", "."):
        return f"pass values as arguments of a script file instead: {reader} FILE VALUE"
    if reader == "xargs":
        return "pass the input as the program's arguments instead: xargs sh -c '... \"$1\" ...' _"
    if program(reader) in SHELLS:
        return f"pass values as its arguments instead: {reader} -s -- VALUE <<'EOF' ... \"$1\" ... EOF"
    return (
        f"pass values as its arguments instead: {reader} - VALUE <<'EOF' (and read the program's arguments)"
    )


def script_files(words: Words, texts: list[str]) -> set[int]:
    """The words naming a file whose text a program runs as code: `bash FILE`, `source FILE`,
    `awk -f FILE` (a process substitution there, `bash <(...)`, holds code)."""
    found: set[int] = set()
    for start in command_starts(words, texts):
        name = program(words[start])
        if name in ("source", "."):
            found.add(start + 1)
        spec = _interpreter(words[start])
        if spec is None:
            continue
        found |= _option_arguments(words, texts, start, spec.script_flags, frozenset())
        code, stdin = _invocation(words, texts, start, spec)
        if not code and not stdin and not spec.program_operand:
            operands = _operands(words, texts, start, spec.with_argument)
            if operands:
                found.add(operands[0])
    return found


def check_argument(words: Words, texts: list[str], at: int) -> bool:
    """Refuse a value in `words[at]` when a program runs that word as code; True when the
    value must stay one word (ssh's host: more words would be the remote command)."""
    for start in command_starts(words, texts):
        if start < at:
            _check_code_word(words, texts, start, at)
    for i, word in enumerate(words[:at]):
        spec = _interpreter(word)
        if spec is not None and not spec.program_operand:
            code, _ = _invocation(words, texts, i, spec)
            if at in code:
                raise Refused(_interpreter_message(word, spec))
            if code:
                return False
        shown = program(word)
        if shown in _COMMAND_OPTION:
            long = _COMMAND_OPTION[shown]
            flags = [
                j
                for j in range(i + 1, at)
                if words[j] == long
                or (words[j] or "").startswith("-")
                and not (words[j] or "").startswith("--")
                and (words[j] or "").endswith("c")
            ]
            if any(at in _one_word_from(words, texts, j + 1) for j in flags) or texts[at].startswith(
                long + "="
            ):
                raise Refused(
                    f"`{shown} -c` runs its argument with a shell, where a value would be code — "
                    "run the program directly with the value as its argument instead: "
                    "sudo -u USER -- PROGRAM ... VALUE"
                )
        if shown == "ssh":
            host, command = _ssh_command(words, i)
            if command is not None and at >= command:
                raise Refused(
                    "ssh's command words are run by the remote user's shell, where a value would be "
                    "code — send the value on standard input instead: "
                    "printf '%s\\n' VALUE | ssh HOST 'read -r v; ... \"$v\"'"
                )
            if at < host and (words[at - 1] == "-o" or texts[at].startswith("-o")):
                raise Refused(
                    "an ssh `-o` option can run commands (ProxyCommand, LocalCommand) — write ssh options literally"
                )
            return True
    return False


def names_variable(words: Words, texts: list[str], at: int) -> bool:
    """Whether bash may take `words[at]` for a variable's name (`read X`, `printf -v X`,
    `unset X`); an unquoted expansion before it may vanish, so later words count too."""
    name = program(words[0])
    if name in _NAME_BUILTINS and at > 0:
        return (words[at - 1] if at > 1 else None) not in _NAME_BUILTINS[name]
    flag = {"printf": "-v", "test": "-v", "wait": "-p"}.get(name)
    if flag is not None:
        return any(at in _one_word_from(words, texts, j + 1) for j in range(1, at) if words[j] == flag)
    return name == "getopts" and at >= 1


def is_arithmetic(words: Words, at: int) -> bool:
    """`let` evaluates its arguments as arithmetic."""
    return program(words[0]) == "let" and at > 0


def program_words(words: Words, texts: list[str]) -> set[int]:
    """The words that choose what runs: where a command starts (its name, the command a wrapper
    runs: `sudo CMD`, `env A=1 CMD`, `xargs CMD`, `find -exec CMD`), and the script file a shell,
    an interpreter or `source` runs (`bash FILE`, `python FILE`, `python -m MODULE`, `. FILE`).
    `command -v NAME` and `command -V NAME` only look the name up."""
    found = set(script_files(words, texts))
    for start in command_starts(words, texts):
        lookup = program(words[start]) == "command" and any(
            set(w[1:]) <= {"p", "v", "V"} and set(w[1:]) & {"v", "V"} for w in _options(words, start)
        )
        found.add(start)
        if lookup:
            return {j for j in found if j <= start}
    return found


# Commands that run their arguments as code, run the command their arguments name, or read
# their arguments as variable names (which bash evaluates: `a[$(cmd)]`): a value choosing among
# programs must not choose one of these, or the words after it would decide what runs.
_RUNNERS = frozenset(
    {
        "eval", "source", ".", "exec", "command", "builtin", "trap", "alias", "bind", "compgen",
        "complete", "enable", "fc", "hash", "let", "declare", "typeset", "local", "export",
        "readonly", "printf", "test", "[", "[[", "wait", "getopts", "coproc", "find", "watch",
        "sg", "parallel", "ssh", "su", "pkexec", "busybox",
    }
)  # fmt: skip
RUNS_ITS_ARGUMENTS = (
    _RUNNERS | SHELLS | set(_INTERPRETERS) | set(_WRAPPERS) | set(_COMMAND_OPTION) | set(_NAME_BUILTINS)
)
_PLAIN_PROGRAM = re.compile(r"[A-Za-z0-9_./+][A-Za-z0-9_.+/:@-]*")


def program_choice_problem(value: object) -> str:
    """Why `value` may not be one of the programs a parameter chooses among, or ""."""
    if not isinstance(value, str) or not _PLAIN_PROGRAM.fullmatch(value):
        return "is not a plain program name or path"
    name = os.path.basename(value)
    if value in RUNS_ITS_ARGUMENTS or name in RUNS_ITS_ARGUMENTS or program(value) in RUNS_ITS_ARGUMENTS:
        return "runs its arguments as code or runs the command they name"
    if not name or name in (".", ".."):
        return "is not a plain program name or path"
    return ""
