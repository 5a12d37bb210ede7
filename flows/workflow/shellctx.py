"""Where in a shell command each template value lands: outside quotes, in "...", in '...', in
a here-document... so each can be quoted the way that context needs. Pure.

`shlex.quote` is only right outside quotes: `echo "v={{ .x }}"` with x=`$(touch p)` would run
the substitution if the value were merely wrapped in single quotes inside the double ones.
"""

from __future__ import annotations

import re

ACTION = "\x01"  # stands for one `{{ }}` action in the skeleton the lexer reads

UNQUOTED, DOUBLE, SINGLE, ANSI = "unquoted", "double", "single", "ansi"
HEREDOC, LITERAL, COMMENT, BACKTICK = "heredoc", "literal", "comment", "backtick"

_HEREDOC = re.compile(r"<<(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([^\s;&|<>()'\"]+))")


def quote_contexts(skeleton: str) -> list[str]:
    """The context of each ACTION in `skeleton` (a command with its actions replaced).

    Here-document contexts carry their delimiter: `heredoc:EOF` (expanding) or `literal:EOF`
    (quoted delimiter); a value containing a line equal to it would end the document early.
    """
    contexts: list[str] = []
    stack = [UNQUOTED]  # UNQUOTED also stands for $( ) and backticks: a new word context
    closers: list[str] = []  # what ends each pushed UNQUOTED level: ")" or "`"
    heredocs: list[tuple[str, bool, bool]] = []  # pending: (delimiter, quoted, strip tabs)
    i, n = 0, len(skeleton)
    while i < n:
        ch = skeleton[i]
        top = stack[-1]
        if ch == ACTION:
            contexts.append(BACKTICK if "`" in closers else top)
            i += 1
            continue
        if top in (HEREDOC, LITERAL):
            end = skeleton.find("\n", i)
            line = skeleton[i : n if end == -1 else end]
            delimiter, _, strip = heredocs[0]
            if (line.lstrip("\t") if strip else line) == delimiter:
                heredocs.pop(0)
                stack.pop()
            else:
                contexts.extend([f"{top}:{delimiter}"] * line.count(ACTION))
            i = n if end == -1 else end + 1
            if stack[-1] not in (HEREDOC, LITERAL) and heredocs:
                stack.append(LITERAL if heredocs[0][1] else HEREDOC)
            continue
        if top == SINGLE:
            if ch == "'":
                stack.pop()
            i += 1
            continue
        if top in (DOUBLE, ANSI):
            if ch == "\\":
                if i + 1 < n and skeleton[i + 1] == ACTION:
                    contexts.append(BACKTICK if "`" in closers else top)
                i += 2
                continue
            if (ch == '"' and top == DOUBLE) or (ch == "'" and top == ANSI):
                stack.pop()
            elif top == DOUBLE and skeleton.startswith("$(", i):
                stack.append(UNQUOTED)
                closers.append(")")
                i += 2
                continue
            elif top == DOUBLE and ch == "`":
                stack.append(UNQUOTED)
                closers.append("`")
            i += 1
            continue
        # UNQUOTED (top level, or inside $( ) / backticks)
        if ch == "\\":
            if i + 1 < n and skeleton[i + 1] == ACTION:
                contexts.append(UNQUOTED)
            i += 2
            continue
        if ch == "'":
            is_ansi = i > 0 and skeleton[i - 1] == "$"
            stack.append(ANSI if is_ansi else SINGLE)
        elif ch == '"':
            stack.append(DOUBLE)
        elif ch == "#" and (i == 0 or skeleton[i - 1] in " \t\n;&|("):
            end = skeleton.find("\n", i)
            comment = skeleton[i : n if end == -1 else end]
            contexts.extend([COMMENT] * comment.count(ACTION))
            i = n if end == -1 else end
            continue
        elif skeleton.startswith("$(", i):
            stack.append(UNQUOTED)
            closers.append(")")
            i += 2
            continue
        elif ch == ")" and closers and closers[-1] == ")" and len(stack) > 1:
            stack.pop()
            closers.pop()
        elif ch == "`":
            if closers and closers[-1] == "`" and len(stack) > 1:
                stack.pop()
                closers.pop()
            else:
                stack.append(UNQUOTED)
                closers.append("`")
        elif skeleton.startswith("<<", i) and not skeleton.startswith("<<<", i):
            match = _HEREDOC.match(skeleton, i)
            if match:
                strip, single_q, double_q, bare = match.groups()
                word = single_q if single_q is not None else double_q if double_q is not None else bare
                quoted = (
                    single_q is not None
                    or double_q is not None
                    or skeleton[match.start(4) - 1 : match.start(4)] == "\\"
                )
                heredocs.append((word, quoted, bool(strip)))
                i = match.end()
                continue
        elif ch == "\n" and heredocs and len(stack) == 1:
            stack.append(LITERAL if heredocs[0][1] else HEREDOC)
        i += 1
    return contexts


def escape_double(text: str) -> str:
    """For inside "...": backslash the characters the shell still interprets there."""
    return re.sub(r'([\\"$`])', r"\\\1", text)


def escape_single(text: str) -> str:
    """For inside '...': close, add an escaped quote, reopen."""
    return text.replace("'", "'\\''")


def escape_heredoc(text: str) -> str:
    """For an expanding here-document: backslash what would expand."""
    return re.sub(r"([\\$`])", r"\\\1", text)


def quote_in(context: str, text: str) -> str:
    """`text` made literal for `context`; raises ValueError where no quoting is safe."""
    import shlex

    kind = context.partition(":")[0]
    if kind == UNQUOTED:
        return shlex.quote(text)
    if kind == DOUBLE:
        return escape_double(text)
    if kind == SINGLE:
        return escape_single(text)
    if kind == COMMENT:
        return " ".join(text.split())
    raise ValueError(f"a value cannot be quoted safely inside {kind}")
