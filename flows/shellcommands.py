"""What programs do with their arguments, for shellquote: which run one as code (`sh -c`,
`eval`, `ssh host CMD`), which read code on standard input (`bash <<EOF`, `| sh`), which take
variable names (`read`, `unset`, `printf -v`). Pure.

A command is given as its words after quote removal (`None` for a word holding a value or an
expansion), the command's name first. Programs are found anywhere among the words, so
`sudo -u app bash -c ...`, `env sh -c ...` and `find . -exec sh -c ...` count too.
"""

from __future__ import annotations

import os
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


SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh"})
_SHELL = _Interpreter("c", frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"}))
_INTERPRETERS = {
    **dict.fromkeys(SHELLS, _SHELL),
    "python": _Interpreter("c", frozenset({"-W", "-X"}), frozenset({"-m"})),
    "perl": _Interpreter("eE", frozenset({"-I", "-M", "-m"})),
    "ruby": _Interpreter("e", frozenset({"-I", "-r"})),
    "node": _Interpreter("ep", frozenset({"-r", "--require"})),
}
# Programs that run one option's argument through a shell: `su -c CMD`.
_COMMAND_OPTION = {"su": "--command", "runuser": "--command", "flock": "--command"}
_SSH_OPTIONS_WITH_ARGUMENT = set("BbcDEeFIiJLlmOoPpQRSWw")
# Builtins whose operands are variable names, and their options that take another argument.
_NAME_BUILTINS = {
    "read": {"-p", "-d", "-t", "-n", "-N", "-u", "-i"},
    "mapfile": {"-d", "-n", "-O", "-s", "-u", "-C", "-c"},
    "readarray": {"-d", "-n", "-O", "-s", "-u", "-C", "-c"},
    "unset": set(),
}


def program(word: str | None) -> str:
    name = os.path.basename(word) if word else ""
    return "python" if name.startswith("python") and name[6:].replace(".", "").isdigit() else name


def _interpreter(word: str | None) -> _Interpreter | None:
    return _INTERPRETERS.get(program(word))


def _invocation(words: Words, texts: list[str], at: int, spec: _Interpreter) -> tuple[range, bool]:
    """For the interpreter at `words[at]`: the indexes of the words it may run as code (`-c
    WORD`; an unquoted expansion may vanish, so the words after it may be the code too), and
    whether it reads its program on standard input (no script operand, `-` or `-s`)."""
    code = stdin_flag = False
    j = at + 1
    while j < len(words):
        word = words[j]
        if word is None:  # a value or an expansion: it may be an option, read on
            if code:
                return _one_word_from(words, texts, j), False
            j += 1
            continue
        if word == "--":
            j += 1
            break
        if word in spec.not_code:
            return range(0), False
        if word in spec.with_argument:
            j += 2
            continue
        if word.startswith("--"):
            j += 1
            continue
        if len(word) > 1 and word[0] in "-+":
            if word[0] == "-":
                code = code or any(f in word[1:] for f in spec.code_flags)
                stdin_flag = stdin_flag or (spec is _SHELL and "s" in word[1:])
            j += 1
            continue
        break
    if code:
        return range(j, j + 1), False
    return range(0), stdin_flag or j >= len(words) or words[j] == "-"


def _one_word_from(words: Words, texts: list[str], j: int) -> range:
    """The words from `j` that may be the next argument: an unquoted expansion may vanish."""
    last = j
    while last < len(words) and words[last] is None and texts[last][:1] not in ("'", '"'):
        last += 1
    return range(j, last + 1)


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
    """The program that runs its standard input as code (`bash`, `ssh host`, `python3 -`), or ""."""
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
    if program(reader) in SHELLS:
        return f"pass values as its arguments instead: {reader} -s -- VALUE <<'EOF' ... \"$1\" ... EOF"
    return (
        f"pass values as its arguments instead: {reader} - VALUE <<'EOF' (and read the program's arguments)"
    )


def check_argument(words: Words, texts: list[str], at: int) -> bool:
    """Refuse a value in `words[at]` when a program runs that word as code; True when the
    value must stay one word (ssh's host: more words would be the remote command)."""
    name = program(words[0])
    if name == "eval" and at > 0:
        raise Refused(
            "`eval` runs its arguments as shell code, where a value would be code — "
            "use the value directly, without eval"
        )
    if name == "watch" and at > 0:
        raise Refused(
            "`watch` runs its arguments with `sh -c`, where a value would be code — "
            "watch -x sh -c '... \"$1\" ...' _ VALUE"
        )
    for i, word in enumerate(words[:at]):
        spec = _interpreter(word)
        if spec is not None:
            code, _ = _invocation(words, texts, i, spec)
            if at in code:
                shown = os.path.basename(word or "")
                safe = (
                    f"{shown} -c '... \"$1\" ...' _ VALUE"
                    if spec is _SHELL
                    else f"{shown} -{spec.code_flags[0]} '...' VALUE, reading it from the program's arguments"
                )
                raise Refused(
                    f"`{shown} -{spec.code_flags[0]}` runs its argument as code, where a value would be "
                    f"code — pass the value as an argument instead: {safe}"
                )
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
