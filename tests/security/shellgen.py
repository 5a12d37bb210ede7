"""Random shell commands with values in them, for the differential fuzz of shell quoting.

Built from the constructs bash users write (quotes, substitutions, arithmetic, here-documents,
second shells, variable names, redirects); most are valid bash, some are not. Only harmless
programs appear, so whatever bash does with them, the only side effect a value can cause is
the hostile value's own `touch`.
"""

from __future__ import annotations

import random

VALUE = "{{ .x }}"
_PROGRAMS = [
    "echo", "printf '%s\\n'", "cat", "sh -c", "bash -c", "eval", "true", ":", "read -r", "let",
    "declare -i", "export", "sudo sh -c", "env bash -c", "ssh h", "python3 -c", "xargs sh -c",
    "su -c", "command", "exec", "time", "test", "printf -v", "unset", "[", "watch", "getopts",
    "trap", "command eval", "time eval", "timeout -- 5 sh -c", "env -i bash -c", "awk", "sed",
    "compgen -W", "mapfile -C", "alias", "bash /dev/stdin", "source", "perl -e 1 -e", "node -p",
]  # fmt: skip


class Generator:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def command(self, depth: int = 0) -> str:
        r, c = self.r, self.r.randint(0, 12 if depth < 2 else 3)
        if c <= 3:
            return self.simple(depth)
        if c == 4:
            return f"{self.command(depth + 1)} | {self.command(depth + 1)}"
        if c == 5:
            return self.command(depth + 1) + r.choice(["; ", " && ", " || ", "\n"]) + self.command(depth + 1)
        if c == 6:
            reader = r.choice(["cat", "sh", "bash -s", "python3 -", "ssh h", "cat > /dev/null"])
            delimiter = r.choice(["EOF", "'EOF'", "-EOF", '"EOF"', "E'OF'"])
            return f"{reader} <<{delimiter}\n{self.document(depth)}\nEOF"
        if c == 7:
            return f"case {self.word(depth)} in {self.word(depth)}) {self.command(depth + 1)};; esac"
        if c == 8:
            return f"(( {self.arith(depth)} ))"
        if c == 9:
            return f"for v in {self.word(depth)}; do {self.command(depth + 1)}; done"
        if c == 10:
            return f"[[ {self.word(depth)}{r.choice([' -gt ', ' == ', ' -v ', ' =~ '])}{self.word(depth)} ]]"
        if c == 11:
            return f"x={self.word(depth)} {r.choice(['', 'true'])}"
        return f"{{ {self.command(depth + 1)}; }}"

    def simple(self, depth: int) -> str:
        r = self.r
        text = r.choice(_PROGRAMS) + " " + " ".join(self.word(depth) for _ in range(r.randint(0, 3)))
        if r.random() < 0.2:
            text += " " + r.choice(
                ["> /dev/null", "2>&1", f"<<< {self.word(depth)}", f"> /dev/null {self.word(depth)}"]
            )
        return text + (" ]" if text.startswith("[ ") else "")

    def word(self, depth: int) -> str:
        r, c = self.r, self.r.randint(0, 14 if depth < 3 else 6)
        return [
            lambda: VALUE,
            lambda: r.choice(["a", "-c", "--", "x=1", "b", "$v", "*", "1", "-v"]),
            lambda: f'"{self.quoted(depth)}"',
            lambda: "'" + r.choice(["a", VALUE, "b c", VALUE + " x"]) + "'",
            lambda: self.word(depth + 1) + self.word(depth + 1),
            lambda: VALUE + r.choice(["", "a", "=", "]", "/"]),
            lambda: r.choice(["", "a"]) + VALUE,
            lambda: f"$({self.command(depth + 1)})",
            lambda: f"$(({self.arith(depth + 1)}))",
            lambda: "${x:-" + self.word(depth + 1) + "}",
            lambda: f"<({self.command(depth + 1)})",
            lambda: f"`{self.command(depth + 1)}`",
            lambda: "$'" + r.choice(["a", VALUE]) + "'",
            lambda: "\\" + r.choice([VALUE, "a", "$"]),
            lambda: "a[" + r.choice([VALUE, "1", f"$({self.command(depth + 1)})"]) + "]",
        ][c]()

    def quoted(self, depth: int) -> str:
        pieces = [VALUE, "a ", '\\"', "${a[" + VALUE + "]}", "'", "$" + VALUE]
        if depth < 3:
            pieces += [f"$({self.command(depth + 1)})", f"$(({self.arith(depth + 1)}))"]
        return "".join(self.r.choice(pieces) for _ in range(self.r.randint(0, 3)))

    def arith(self, depth: int) -> str:
        inner = f"$({self.command(depth + 1)})" if depth < 3 else "2"
        return self.r.choice(["1", VALUE, inner, f"a[{VALUE}]", "x"]) + self.r.choice(
            ["", " + 1", f" - {VALUE}"]
        )

    def document(self, depth: int) -> str:
        lines = [
            VALUE,
            f"a {VALUE}",
            f"{VALUE} b",
            f"$({self.command(depth + 1)})",
            "\\" + VALUE,
            "$" + VALUE,
        ]
        lines += [
            " EOF",
            "\tEOF",
            "x\\",
            "${a[" + VALUE + "]}",
            f"`echo {VALUE}`",
            f"'{VALUE}'",
            f'"{VALUE}"',
        ]
        return "\n".join(self.r.choice(lines) for _ in range(self.r.randint(1, 3)))
