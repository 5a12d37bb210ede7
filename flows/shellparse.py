"""Reads a command with bash's grammar (tree-sitter-bash) to tell where each value lands. Pure.

The command becomes a skeleton: each value a placeholder word (`__opsflow_value_0__`), each
control action (`{{ if }}`) nothing. The skeleton is parsed, and each placeholder classified by
its ancestors in the syntax tree: the innermost quotes decide its quoting (up to the nearest
`$( )`, which starts afresh), while arithmetic, variable names and second shells count at any
depth (the output of `$(echo X)` inside `$(( ))` is evaluated too). What the grammar cannot read
is refused: an error node, a node type not listed in `_KNOWN`, a here-document that bash would
end on another line than the grammar does.

tree-sitter is imported on first use; loading it and the grammar costs about 20 ms.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

from flows.shellcommands import (
    CODE_VARIABLES,
    INTEGER_VARIABLES,
    Refused,
    check_argument,
    code_variable_message,
    command_starts,
    is_arithmetic,
    names_variable,
    program,
    program_words,
    script_files,
    stdin_script_hint,
)
from flows.shellcommands import reads_code_on_stdin as _reads_code_on_stdin
from flows.shellquote import (
    ARITH,
    COMMENT,
    DOUBLE,
    HEREDOC,
    LITERAL,
    SINGLE,
    UNQUOTED,
    Hole,
    Shape,
    Slot,
)

_PLACEHOLDER = "__opsflow_value_{}__"
_RESERVED = "__opsflow_value_"
_OTHER_VALUE = re.compile(re.escape(_RESERVED) + r"\d+__")
ENV_HINT = "or read the value from the environment instead"
_ARITH_TESTS = {"-eq", "-ne", "-lt", "-le", "-gt", "-ge"}
# Every node type a placeholder may sit under; any other is a construct not classified here.
_KNOWN = frozenset(
    [
        "program",
        "command",
        "command_name",
        "word",
        "concatenation",
        "string",
        "string_content",
        "raw_string",
        "ansi_c_string",
        "translated_string",
        "list",
        "pipeline",
        "redirected_statement",
        "file_redirect",
        "herestring_redirect",
        "heredoc_redirect",
        "heredoc_body",
        "heredoc_content",
        "heredoc_start",
        "heredoc_end",
        "subshell",
        "compound_statement",
        "if_statement",
        "elif_clause",
        "else_clause",
        "while_statement",
        "for_statement",
        "c_style_for_statement",
        "do_group",
        "case_statement",
        "case_item",
        "extglob_pattern",
        "regex",
        "function_definition",
        "negated_command",
        "variable_assignment",
        "variable_assignments",
        "declaration_command",
        "unset_command",
        "test_command",
        "binary_expression",
        "unary_expression",
        "parenthesized_expression",
        "ternary_expression",
        "postfix_expression",
        "array",
        "brace_expression",
        "comment",
        "command_substitution",
        "process_substitution",
        "arithmetic_expansion",
        "expansion",
        "simple_expansion",
        "subscript",
        "variable_name",
    ]
)
# Nodes that change how the text inside them is read: a control block must start and end
# inside the same ones, or a value after it would land elsewhere than where it was checked.
_NESTING = frozenset(
    [
        "string",
        "raw_string",
        "ansi_c_string",
        "translated_string",
        "heredoc_redirect",
        "heredoc_body",
        "command_substitution",
        "process_substitution",
        "arithmetic_expansion",
        "expansion",
        "subscript",
        "comment",
        "test_command",
        "c_style_for_statement",
    ]
)
_WORDS = ("word", "string", "raw_string", "concatenation", "number", "ansi_c_string", "translated_string")

_BACKTICK = "a value inside backticks cannot be quoted safely — write $( ... ) instead"
_ANSI = "a value inside $'...' cannot be quoted safely — move it out of the quotes"
_EXPANSION = (
    "a value inside ${...} cannot be quoted safely — assign it to a variable first (v=VALUE) "
    "and write ${NAME:-$v}"
)
_NAME = (
    "a value used as a variable's name is evaluated by bash (`a[$(cmd)]` runs cmd) — "
    'pass it as data instead: v=VALUE, then "$v"'
)
_DOLLAR = "a value right after `$` would be read as part of a variable's name — write ${NAME}VALUE"
_BACKSLASH = "a backslash right before a value would undo its quoting — remove the backslash"
_DELIMITER = "a value cannot be a here-document's delimiter — write the delimiter itself"
_COPROC = (
    "bash's grammar reads `coproc` before a compound command (`coproc NAME { ... }`) otherwise than "
    "bash does, so where the values after it land cannot be told — set a variable before it and use "
    'that: v=VALUE; coproc NAME { PROGRAM "$v"; }'
)
# Words that start a compound command: after `coproc` (or `coproc NAME`) the grammar reads them as words.
_COMPOUND = frozenset({"{", "(", "((", "[[", "if", "while", "until", "for", "case", "select", "function"})
# Builtins that assign to the variables their arguments name: into a name reference, the
# value becomes the name of the variable it refers to, which bash evaluates (`a[$(cmd)]`).
_ASSIGNING = frozenset({"read", "mapfile", "readarray", "printf", "getopts", "wait"})
_DUPLICATE = (
    "bash expands the word after `>&` a second time, as a file name, when it is not a number "
    "(`$(cmd)` in a value runs), so no quoting holds a value there — write `> VALUE 2>&1` or `&> VALUE`"
)


class _Problem(Exception):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message if line is None else f"line {line} of the command: {message}"


@functools.cache
def _parser() -> Any:
    import tree_sitter
    import tree_sitter_bash

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bash.language()))


@functools.lru_cache(maxsize=1024)
def analyse_parts(parts: tuple[str | Hole, ...]) -> Shape:
    """See shellquote.analyse."""
    texts = [p if isinstance(p, str) else "" for p in parts]
    for i, part in enumerate(parts):  # `{{-` and `-}}` eat the whitespace beside them
        if isinstance(part, Hole):
            if part.trim_before and i > 0:
                texts[i - 1] = texts[i - 1].rstrip()
            if part.trim_after and i + 1 < len(parts):
                texts[i + 1] = texts[i + 1].lstrip()
    skeleton = bytearray()
    spans: list[tuple[int, int, bool]] = []
    values = 0
    for part, text in zip(parts, texts, strict=True):
        if isinstance(part, Hole):
            start = len(skeleton)
            if part.value:
                skeleton += _PLACEHOLDER.format(values).encode()
                values += 1
            spans.append((start, len(skeleton), part.value))
        else:
            skeleton += text.encode()
    source = bytes(skeleton)
    try:
        if any(_RESERVED in text for text in texts):
            raise _Problem(f"the text `{_RESERVED}` is reserved")
        root = _parser().parse(source).root_node
        _check_syntax(root, source)
        _check_heredocs(root, source)
        reader = _Reader(root, source)
        slots = tuple(reader.slot(start, end) for start, end, value in spans if value)
        nesting = tuple(reader.nesting(start) for start, _, _ in spans)
    except _Problem as problem:
        return Shape((), (), problem.message)
    return Shape(slots, nesting)


def _line(source: bytes, offset: int) -> int:
    return source.count(b"\n", 0, offset) + 1


def _text(node: Any) -> str:
    return node.text.decode(errors="replace")


def _descendants(node: Any, kind: str) -> list[Any]:
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        if current.type == kind:
            found.append(current)
        stack.extend(current.children)
    return found


def _check_syntax(root: Any, source: bytes) -> None:
    if not root.has_error:
        return
    node = root
    while True:  # descend to the first node that is itself the error
        broken = next((c for c in node.children if c.is_error or c.is_missing or c.has_error), None)
        if broken is None or node.is_error or node.is_missing:
            break
        node = broken
    text = _text(node) or source.split(b"\n")[_line(source, node.start_byte) - 1].decode(errors="replace")
    near = " ".join(_OTHER_VALUE.sub("VALUE", text).split())[:40]
    raise _Problem(
        f"bash's grammar cannot read this command near `{near}`, so where its values land cannot be "
        f"told — write that part more plainly, {ENV_HINT}",
        _line(source, node.start_byte),
    )


_WORD_END = re.compile(rb"[ \t\n;&|()<>]")


def _bash_word(source: bytes, i: int) -> tuple[int, str]:
    """The here-document delimiter bash reads at `i`: (its end, its text after quote removal)."""
    out = bytearray()
    while i < len(source) and not _WORD_END.match(source, i):
        ch = source[i : i + 1]
        if ch == b"'":
            end = source.find(b"'", i + 1)
            end = len(source) if end < 0 else end
            out += source[i + 1 : end]
            i = end + 1
        elif ch == b'"':
            i += 1
            while i < len(source) and source[i : i + 1] != b'"':
                if source[i : i + 1] == b"\\" and source[i + 1 : i + 2] in (b"\\", b'"', b"$", b"`"):
                    i += 1
                out += source[i : i + 1]
                i += 1
            i += 1
        elif ch == b"\\":
            out += source[i + 1 : i + 2]
            i += 2
        elif ch in (b"$", b"`"):
            raise _Problem("a here-document delimiter with `$` or a backtick is not supported")
        else:
            out += ch
            i += 1
    return i, out.decode(errors="replace")


def _quoted_delimiter(node: Any) -> bool:
    return any(c in _text(node) for c in "'\"\\")


def _check_heredocs(root: Any, source: bytes) -> None:
    """Each here-document must end where bash ends it: tree-sitter-bash ends `<<'EOF'X` at
    `EOF` (bash: at `EOFX`) and a document at a line ` EOF` (bash: only at `EOF`)."""
    for node in _descendants(root, "heredoc_redirect"):
        line = _line(source, node.start_byte)
        start = next((c for c in node.children if c.type == "heredoc_start"), None)
        end = next((c for c in node.children if c.type == "heredoc_end"), None)
        if start is None or end is None or node.children[0].type not in ("<<", "<<-"):
            raise _Problem(f"cannot tell where this here-document ends — {ENV_HINT}", line)
        i = node.children[0].end_byte
        while source[i : i + 1] in (b" ", b"\t"):
            i += 1
        word_end, delimiter = _bash_word(source, i)
        if word_end != start.end_byte or not delimiter:
            written = source[i:word_end].decode(errors="replace")
            raise _Problem(
                f"bash reads the here-document delimiter `{written}` differently than its grammar does "
                f"— quote it as one word: <<'{delimiter or 'EOF'}'",
                line,
            )
        first = source.find(b"\n", start.end_byte) + 1
        if first == 0 or first > end.start_byte:
            raise _Problem(f"cannot tell where this here-document ends — {ENV_HINT}", line)
        inside = node.parent
        while inside is not None and inside.type not in ("command_substitution", "process_substitution"):
            inside = inside.parent
        stop = _document_end(
            source,
            first,
            delimiter,
            node.children[0].type == "<<-",
            not _quoted_delimiter(start),
            starts=inside is not None,
        )
        if stop != end.start_byte:
            raise _Problem(
                f"bash ends this here-document on another line than its grammar does (a `{delimiter}` "
                f"line with blanks around it, or after a line ending in a backslash?) — {ENV_HINT}",
                line,
            )


def _document_end(
    source: bytes, i: int, delimiter: str, strip_tabs: bool, joins: bool, *, starts: bool = False
) -> int | None:
    """Where the delimiter starts on the line bash ends the document with; an unquoted
    document joins a line ending in an odd number of backslashes to the next one. Inside
    `$( )` (`starts`) bash ends it at a line that starts with the delimiter."""
    wanted = delimiter.encode()
    joined = False
    while True:
        nl = source.find(b"\n", i)
        stop = len(source) if nl < 0 else nl
        if not joined:
            start = i
            while strip_tabs and source[start : start + 1] == b"\t":
                start += 1
            if source[start:stop] == wanted or (starts and source[start:stop].startswith(wanted)):
                return start
        line = source[i:stop]
        joined = joins and (len(line) - len(line.rstrip(b"\\"))) % 2 == 1
        if nl < 0:
            return None
        i = nl + 1


def _literal(node: Any) -> str | None:
    """The text a word stands for after quote removal; None when it holds a value or an expansion."""
    kind = node.type
    text = _text(node)
    if _RESERVED in text:
        return None
    if kind == "command_name":
        return _literal(node.children[0]) if len(node.children) == 1 else None
    if kind in ("word", "number"):
        return None if "$" in text or "`" in text else re.sub(r"\\(.)", r"\1", text)
    if kind == "raw_string":
        return text[1:-1]
    if kind == "string":
        inner = [c for c in node.children if c.type != '"']
        if all(c.type == "string_content" for c in inner):
            return re.sub(r"\\([\\\"$`])", r"\1", "".join(_text(c) for c in inner))
        return None
    if kind == "concatenation":
        pieces = [_literal(c) for c in node.children]
        return None if None in pieces else "".join(p for p in pieces if p is not None)
    return None


_REDIRECTS = ("file_redirect", "heredoc_redirect", "herestring_redirect")
_NOT_ARGUMENTS = ("file_descriptor", "heredoc_start", "heredoc_body", "heredoc_end", "pipeline")


def _redirect_arguments(redirect: Any) -> list[Any]:
    """Words tree-sitter-bash hangs under a redirect that bash reads as arguments of the command
    (`sh -c > log 'script'`, `cat <<EOF a b`): all but a file redirect's target."""
    named = [c for c in redirect.children if c.is_named and c.type not in _NOT_ARGUMENTS]
    return named if redirect.type == "heredoc_redirect" else named[1:]


def _redirects_of(command: Any) -> list[Any]:
    """The redirects bash applies to this simple command. tree-sitter-bash hangs the redirects
    of the last command of `a && b > f` or `a | b <<EOF` on the whole list or pipeline."""
    found = [c for c in command.children if c.type in _REDIRECTS]
    node, end = command, command.end_byte
    while node.parent is not None and node.parent.type in ("list", "pipeline", "redirected_statement"):
        node = node.parent
        if node.type == "redirected_statement":
            for redirect in node.children:
                if redirect.type in _REDIRECTS and redirect.start_byte >= end:
                    if node.text[end - node.start_byte : redirect.start_byte - node.start_byte].strip():
                        break  # something else comes between: not this command's
                    found.append(redirect)
                    end = redirect.end_byte
            break
    return found


def _command_words(command: Any) -> list[Any]:
    """The command's words as bash reads them: its name, then its arguments in order."""
    name = command.child_by_field_name("name")
    words = ([name] if name is not None else []) + list(command.children_by_field_name("argument"))
    words += [word for redirect in _redirects_of(command) for word in _redirect_arguments(redirect)]
    return sorted(words, key=lambda word: word.start_byte)


_SIMPLE = ("command", "declaration_command", "unset_command")


def _commands_in(node: Any, kinds: tuple[str, ...] = ("command",)) -> list[Any]:
    return [node] if node.type in kinds else [n for kind in kinds for n in _descendants(node, kind)]


def _reads_code(command: Any) -> str:
    if command is None or command.type != "command":
        return ""
    words = _command_words(command)
    return _reads_code_on_stdin([_literal(w) for w in words], [_text(w) for w in words])


class _Reader:
    """Classifies the positions of one parsed skeleton."""

    def __init__(self, root: Any, source: bytes) -> None:
        self.root = root
        self.source = source
        self.integers = (
            INTEGER_VARIABLES
            | {  # declared `-i` anywhere in the command: assigning to one is arithmetic
                _assigned(c)
                for node in _descendants(root, "declaration_command")
                if _declares(node, "i")
                for c in node.children
                if c.type in ("variable_name", "variable_assignment")
            }
        )
        self.namerefs = {  # declared `-n`: what is assigned to one names a variable
            _assigned(c)
            for node in _descendants(root, "declaration_command")
            if _declares(node, "n")
            for c in node.children
            if c.type in ("variable_name", "variable_assignment")
        }
        self.coprocs = [  # where a `coproc` the grammar misreads starts
            node.start_byte
            for node in _descendants(root, "command")
            if _literal(_command_words(node)[0]) == "coproc"
            and any(_literal(w) in _COMPOUND for w in _command_words(node)[1:3])
        ]
        self.associative = {  # declared `-A`: a subscript is a string, not arithmetic
            _assigned(c)
            for node in _descendants(root, "declaration_command")
            if _declares(node, "A")
            for c in node.children
            if c.type in ("variable_name", "variable_assignment")
        }

    def nesting(self, offset: int) -> tuple[str, ...]:
        """The nodes in _NESTING that strictly contain `offset`, outermost first."""
        node = self.root.descendant_for_byte_range(offset, offset)
        found = []
        while node is not None:
            if node.start_byte < offset < node.end_byte and node.type in _NESTING:
                found.append(node.type)
            node = node.parent
        return tuple(reversed(found))

    def slot(self, start: int, end: int) -> Slot:
        line = _line(self.source, start)
        try:
            return self._slot(start, end, line)
        except Refused as refused:
            raise _Problem(refused.message, line) from None
        except _Problem as problem:
            raise _Problem(problem.message, line) from None

    def _slot(self, start: int, end: int, line: int) -> Slot:
        chain = []
        node = self.root.descendant_for_byte_range(start, end)
        while node is not None:
            chain.append(node)
            node = node.parent
        token = chain[0]
        if token.type in ("word", "regex", "extglob_pattern") and any(
            c in _OTHER_VALUE.sub("", _text(token)) for c in "\"'$`"
        ):
            # quotes or expansions inside one token: the grammar did not read this part
            shown = _OTHER_VALUE.sub("VALUE", _text(token))[:40]
            raise _Problem(f"a value inside `{shown}` cannot be placed safely — make it a word of its own")
        if any(coproc < start for coproc in self.coprocs):
            raise _Problem(_COPROC)
        kind = None
        delimiter, strip_tabs, starts_end = "", False, False
        arith = name = program = False
        in_scope = True  # no $( ) or <( ) yet between the value and this node
        word: dict[str, Any] = {}  # facts of the innermost command the value is a word of
        for index, node in enumerate(chain):
            t = node.type
            child = chain[index - 1] if index else None
            if t not in _KNOWN:
                raise _Problem(f"a value inside `{t}` is not supported — {ENV_HINT}")
            if t == "comment" and in_scope:
                kind = kind or COMMENT
            elif t == "raw_string" and in_scope:
                kind = kind or SINGLE
            elif t in ("string", "translated_string") and in_scope:
                kind = kind or DOUBLE
            elif t == "ansi_c_string" and in_scope:
                raise _Problem(_ANSI)
            elif t in ("heredoc_start", "heredoc_end"):
                raise _Problem(_DELIMITER)
            elif t == "heredoc_body":
                redirect = node.parent
                if in_scope and kind is None:
                    opener = next(c for c in redirect.children if c.type == "heredoc_start")
                    kind = LITERAL if _quoted_delimiter(opener) else HEREDOC
                    if kind == HEREDOC and re.search(rb"(?<!\\)(\\\\)*`", node.text):
                        raise _Problem(_BACKTICK)  # the grammar does not read backticks in documents
                    delimiter = _bash_word(self.source, opener.start_byte)[1]
                    strip_tabs = redirect.children[0].type == "<<-"
                    starts_end = any(
                        n.type in ("command_substitution", "process_substitution") for n in chain[index:]
                    )
                self._check_stdin(redirect, "this here-document")
            elif t == "herestring_redirect":
                self._check_stdin(node, "this here-string")
            elif t == "command_substitution" or (t == "subshell" and _text(node).startswith("((")):
                if node.children[0].type == "`":
                    raise _Problem(_BACKTICK)
                if _text(node).lstrip("$").startswith("(("):  # bash reads `$((` as arithmetic
                    raise _Problem("`$((` here is read as arithmetic by bash — write `$( (` for a subshell")
                in_scope = in_scope and t == "subshell"
            elif t == "process_substitution":
                in_scope = False
                self._check_process_substitution(node)
            elif t == "arithmetic_expansion" or (t == "compound_statement" and node.children[0].type == "(("):
                arith = True
            elif t == "c_style_for_statement":
                arith = arith or (child is not None and child.type not in ("do_group", "compound_statement"))
            elif t == "subscript":
                arith = arith or child != node.children[0]
            elif t == "expansion":
                arith = arith or _after_colon(node, child)
                if not arith and in_scope:
                    raise _Problem(_EXPANSION)
            elif t == "simple_expansion":
                raise _Problem(_DOLLAR)
            elif t == "variable_name" and index == 0:
                name = True
            elif t in ("binary_expression", "unary_expression"):
                operator = next((_text(c) for c in node.children if c.type == "test_operator"), "")
                test = next((n for n in chain[index:] if n.type == "test_command"), None)
                # `[[ a -gt b ]]` evaluates its operands as arithmetic; `[` and `test` do not
                arith = arith or (
                    operator in _ARITH_TESTS and test is not None and test.children[0].type == "[["
                )
                name = name or operator in ("-v", "-R")
            elif t == "variable_assignment" and child != node.children[0]:
                assigned = _assigned(node)
                if assigned in CODE_VARIABLES:
                    raise Refused(code_variable_message(assigned))
                arith = arith or assigned in self.integers
                name = name or assigned in self.namerefs
            elif t == "for_statement" and child is not None and child.type in _WORDS:
                variable = node.child_by_field_name("variable")
                name = name or (variable is not None and _text(variable) in self.namerefs)
            elif t == "array" and child is not None and assigned_subscript(child, start):
                arith = arith or _assigned(node.parent) not in self.associative
            elif t == "declaration_command":
                operand = child is not None and child.type in _WORDS and not _text(child).startswith("-")
                name = name or operand or _declares(node, "n")
                arith = arith or _declares(node, "i")
            elif t == "unset_command":
                name = True
            elif t == "pipeline":
                self._check_pipeline(node, child)
            elif t == "file_redirect" and _expanded_twice(node, child):
                raise _Problem(_DUPLICATE)
            elif t in _REDIRECTS and child in _redirect_arguments(node):
                owner = _redirected_command(node)
                if owner is not None and owner.type != "command":  # `declare -i > f x=VALUE`
                    operand = not _text(child).startswith("-")
                    name = name or owner.type == "unset_command" or operand or _declares(owner, "n")
                    arith = arith or _declares(owner, "i")
                facts = (
                    self._command(owner, child, start)
                    if owner is not None and owner.type == "command"
                    else {}
                )
                arith = arith or facts.get("arith", False)
                name = name or facts.get("name", False)
                program = program or facts.get("program", False)
                if in_scope and not word:
                    word = facts
            elif t == "command":
                self._check_output_to_code(node)
                name = name or self._assigns_nameref(node)
                facts = self._command(node, child, start)
                arith = arith or facts.get("arith", False)
                name = name or facts.get("name", False)
                program = program or facts.get("program", False)
                if in_scope and not word:
                    word = facts
        if arith:
            return Slot(ARITH, line)
        if name:
            raise _Problem(_NAME)
        kind = kind or UNQUOTED
        if kind in (UNQUOTED, DOUBLE, HEREDOC) and self._escaped(start):
            raise _Problem(_BACKSLASH)
        before, after = self._line_around(start, end) if kind in (HEREDOC, LITERAL) else ("", "")
        quoted_word = kind in (UNQUOTED, DOUBLE, SINGLE)
        return Slot(
            kind,
            line,
            delimiter=delimiter,
            strip_tabs=strip_tabs,
            starts_end=starts_end,
            line_before=before,
            line_after=after,
            option_of=word.get("option_of") if quoted_word else None,
            starts_word=bool(word.get("starts_word")) and quoted_word,
            command_word=bool(word.get("command_word")) and kind == UNQUOTED,
            one_word=bool(word.get("one_word")) and kind == UNQUOTED,
            program=program,
        )

    def _escaped(self, start: int) -> bool:
        count = 0
        while start - count > 0 and self.source[start - count - 1] == ord("\\"):
            count += 1
        return count % 2 == 1

    def _line_around(self, start: int, end: int) -> tuple[str, str]:
        first = self.source.rfind(b"\n", 0, start) + 1
        last = self.source.find(b"\n", end)
        last = len(self.source) if last < 0 else last
        before = _OTHER_VALUE.sub("\0", self.source[first:start].decode(errors="replace"))
        return before, _OTHER_VALUE.sub("\0", self.source[end:last].decode(errors="replace"))

    def _check_stdin(self, redirect: Any, what: str) -> None:
        """A document or string fed to a program that runs its input as code holds code."""
        statement = redirect.parent
        fed = [statement] if statement.type == "command" else []  # `sh <<< ...`
        body = statement.child_by_field_name("body") if statement.type == "redirected_statement" else None
        if body is not None:  # a loop or list reading the document passes it to its commands
            fed += _commands_in(body)
        # tree-sitter-bash hangs `cat <<EOF | sh` 's pipeline under the redirect
        fed += [c for p in redirect.children if p.type == "pipeline" for c in _commands_in(p)]
        for command in fed:
            if self._assigns_nameref(command):
                raise _Problem(_NAME)
            reader = _reads_code(command)
            if reader:
                raise _Problem(
                    f"{what} is the program `{reader}` runs, where a value would be code — {stdin_script_hint(reader)}"
                )

    def _assigns_nameref(self, command: Any) -> bool:
        """`read r`, `printf -v r`, where `r` is declared `-n`: what they assign names a variable."""
        if command is None or command.type != "command" or not self.namerefs:
            return False
        literals = [_literal(w) for w in _command_words(command)]
        return program(literals[0]) in _ASSIGNING and any(w in self.namerefs for w in literals[1:])

    def _check_pipeline(self, pipeline: Any, child: Any) -> None:
        stages = [c for c in pipeline.children if c.is_named]
        if child not in stages:
            return
        for later in stages[stages.index(child) + 1 :]:
            command = later.child_by_field_name("body") if later.type == "redirected_statement" else later
            if any(self._assigns_nameref(c) for c in _commands_in(command)):
                raise _Problem(_NAME)
            reader = _reads_code(command)
            if reader:
                raise _Problem(
                    f"the output of this pipeline is run as code by `{reader}`, where a value would be "
                    f"code — {stdin_script_hint(reader)}"
                )

    def _check_process_substitution(self, node: Any) -> None:
        """`bash <(...)`, `source <(...)`, `sh < <(...)`: the output of `...` is code."""
        parent = node.parent
        reader = ""
        if parent.type == "command":
            words = _command_words(parent)
            literals, texts = [_literal(w) for w in words], [_text(w) for w in words]
            if node in words and words.index(node) in script_files(literals, texts):
                reader = literals[0] or "the command"
        elif parent.type == "file_redirect" and parent.children[0].type == "<":
            reader = _reads_code(_redirected_command(parent))
        if reader:
            raise _Problem(
                f"the output of this process substitution is run as code by `{reader}`, where a value "
                f"would be code — {stdin_script_hint(reader)}"
            )

    def _check_output_to_code(self, command: Any) -> None:
        """`echo ... > >(sh)`, `tee >(bash)`: what the command writes there is code."""
        targets = [w for w in _command_words(command) if w.type == "process_substitution"]
        targets += [
            c
            for r in _redirects_of(command)
            if r.type == "file_redirect"
            for c in r.children
            if c.type == "process_substitution"
        ]
        for target in targets:
            if _text(target).startswith(">("):
                for inner in _commands_in(target):
                    reader = _reads_code(inner)
                    if reader:
                        raise _Problem(
                            f"the output of this command is run as code by `{reader}`, where a value would be "
                            f"code — {stdin_script_hint(reader)}"
                        )

    def _command(self, command: Any, child: Any, start: int) -> dict[str, Any]:
        words = _command_words(command)
        if child not in words:
            return {}  # a redirect, or an assignment before the command
        at = words.index(child)
        literals = [_literal(w) for w in words]
        texts = [_text(w) for w in words]
        one_word = check_argument(literals, texts, at)
        # A value is one word and not an option (those are refused): read as such, every value
        # shows where its command starts. A list value is more words: where a value may be the
        # command (`timeout {{ .x }} CMD`), it must be one word.
        program = at in program_words(
            [_neutral(w, literal) for w, literal in zip(words, literals, strict=True)], texts
        )
        named = words[0].type == "command_name"
        facts: dict[str, Any] = {
            "one_word": one_word or at in command_starts(literals, texts),
            "program": program,
            "arith": is_arithmetic(literals, at),
            "name": names_variable(literals, [_text(w) for w in words], at),
            "command_word": at == 0 and named,
        }
        # after `--`, nothing is an option of the command that `--` belongs to (`timeout -- 5 tar`: tar's)
        owner = max(s for s in command_starts(literals, [_text(w) for w in words]) if s < at or s == 0)
        if at > 0 and "--" not in literals[owner + 1 : at]:
            shown = literals[owner] if owner or named else ""
            facts["option_of"] = os.path.basename(shown or "") or "the command"
            prefix = self.source[child.start_byte : start].decode(errors="replace")
            facts["starts_word"] = all(c in "\"'" for c in prefix)
        return facts


def _neutral(word: Any, literal: str | None) -> str | None:
    """A word as bash reads it once its values are filled in: each value stands for `x`."""
    if literal is not None or _RESERVED not in _text(word):
        return literal
    text = _OTHER_VALUE.sub("x", _text(word))
    if "$" in text or "`" in text or "\\" in text:
        return None
    return text.replace('"', "").replace("'", "")


def _expanded_twice(redirect: Any, child: Any) -> bool:
    """Whether `child` is the target of `>&WORD` or `1>&WORD`: when the expanded word is not a
    number or `-`, bash makes it `&>WORD` and expands it again (bash 5.2, redir.c), so quotes a
    value was given are gone the second time. `2>&WORD` and `<&WORD` are refused as ambiguous."""
    operator = next((c for c in redirect.children if not c.is_named), None)
    if operator is None or operator.type != ">&":
        return False
    target = next((c for c in redirect.children if c.is_named and c.type != "file_descriptor"), None)
    if child is None or child != target:
        return False
    fd = next((_text(c) for c in redirect.children if c.type == "file_descriptor"), "1")
    return not fd.isdigit() or int(fd) == 1  # `{fd}>&` is read as no number: refused too


def _redirected_command(redirect: Any) -> Any:
    """The simple command a redirect (and the words tree-sitter-bash hangs under it) belongs to."""
    parent = redirect.parent
    if parent.type in _SIMPLE:
        return parent
    body = parent.child_by_field_name("body") if parent.type == "redirected_statement" else None
    owners = (
        [c for c in _commands_in(body, _SIMPLE) if redirect in _redirects_of(c)] if body is not None else []
    )
    return owners[0] if owners else None


def _assigned(node: Any) -> str:
    """The name of the variable an assignment (or a declared name) sets: `a` of `a[0]=1`."""
    name = node if node.type in ("variable_name", "subscript") else node.children[0]
    if name.type == "subscript":
        name = name.children[0]
    return _text(name)


def assigned_subscript(element: Any, start: int) -> bool:
    """In `a=([SUBSCRIPT]=value)`: whether the offset `start` is in the subscript."""
    text = element.text
    if not text.startswith(b"["):
        return False
    close = text.rfind(b"]=")
    return close > 0 and start < element.start_byte + close


def _declares(node: Any, flag: str) -> bool:
    return any(c.type == "word" and _text(c).startswith("-") and flag in _text(c)[1:] for c in node.children)


def _after_colon(expansion: Any, child: Any) -> bool:
    """`${x:offset:length}`: what follows a lone `:` is arithmetic."""
    seen = False
    for c in expansion.children:
        if c == child:
            return seen
        seen = seen or c.type == ":"
    return False
