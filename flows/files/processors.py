"""What turns one input file into one output: a small interface and its three kinds.

- a command template: `gzip -c {input} > {output}` (`{input}`, `{output}`, `{name}` are
  quoted for where they land, and refused where no quoting is safe, e.g. `sh -c '... {input}'`;
  a template without shell syntax runs without a shell, as xargs would);
- a Python callable: `package.module:function` called as `function(input_path, output_path)`;
- the built-in `records:SCHEMA.json`: JSON / JSON Lines / CSV records validated against a JSON
  Schema and written as JSON Lines, with a per-record error report.

Adding a kind means one class here and one branch in `parse_processor`.

The batch opens each input once and checks the file it opened (discover.py: `open_input`); a
processor is handed that descriptor and reads it, never the input's own path: `{input}` and a
callable's first argument are `<private directory>/<the input's name>`, a link to
`/proc/self/fd/N` (the descriptor, which commands inherit) in a directory only this user can
change, so names and extensions read as before while a link swapped in at the input leads nowhere.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import hashlib
import importlib
import io
import json
import os
import re
import shlex
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flows.errors import OpsflowError, ValidationError
from flows.masking import mask
from flows.shellquote import ARITH, Hole, Shape, Slot, UnsafeValue, analyse, check_value, quote_text
from flows.user_files import open_regular, read_user_text
from flows.workflow.shell import run_command

PLACEHOLDER = re.compile(r"\{(input|output|name)\}")
SHELL_SYNTAX = re.compile(r"[|&;<>()$`\\\"'*?\[\]#~=%{}\n]")
MAX_ERROR_CHARS = 500


class ProcessingFailed(Exception):
    """One attempt at one file failed; the message says why in one line."""

    def __init__(self, message: str) -> None:
        # It often quotes the processor's stderr: the batch's secrets come out before it is kept.
        super().__init__(mask(" ".join(message.split()))[:MAX_ERROR_CHARS])


class Processor(Protocol):
    identity: str  # stable text that changes whenever the output would: part of the content hash

    def output_name(self, input_path: Path) -> str:
        """The output file's name for this input (the directory is the batch's)."""
        ...

    def process(
        self, input_path: Path, output: Output | None, timeout: float | None, fd: int | None = None
    ) -> str:
        """Write `output.path` (temporary: renamed into place on success) or raise
        ProcessingFailed; returns a short note for the record. `fd`, when given, is the input
        opened and checked: what is read (`input_path` only names it)."""
        ...


_HAS_FD_NAMES = os.path.isdir("/proc/self/fd")
_private: str | None = None
_private_lock = threading.Lock()
_per_thread = threading.local()


def _thread_dir() -> str:
    """A directory of this thread's own inside a 0700 directory of this process (removed when
    it exits): one attempt at a time runs in a thread, so its link's name is free there."""
    global _private
    folder = getattr(_per_thread, "folder", None)
    if folder is not None and os.path.isdir(folder):
        return folder
    with _private_lock:
        if _private is None or not os.path.isdir(_private):
            _private = tempfile.mkdtemp(prefix="opsflow-inputs-")
            atexit.register(shutil.rmtree, _private, True)
        _per_thread.folder = tempfile.mkdtemp(dir=_private)
    return _per_thread.folder


@contextlib.contextmanager
def opened_name(input_path: Path, fd: int | None) -> Iterator[Path]:
    """The name under which the processor reads the input: with `fd`, a link named like the input
    to `/proc/self/fd/<fd>` (in this process and in a command that inherits `fd`, the file opened)
    in a private directory; `/dev/fd/<fd>` where /proc is missing."""
    if fd is None:
        yield input_path
        return
    if not _HAS_FD_NAMES:
        yield Path(f"/dev/fd/{fd}")
        return
    link = os.path.join(_thread_dir(), input_path.name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)  # left by an attempt that did not end (its thread was interrupted)
    os.symlink(f"/proc/self/fd/{fd}", link)
    try:
        yield Path(link)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(link)


@dataclass
class Output:
    """Where a processor writes: `path` is temporary and becomes `final` only on success.

    Side files (reports) from `side()` are moved next to `final` whatever the outcome: an
    error report matters most when the file failed.
    """

    path: Path
    final: Path
    sides: dict[Path, Path] = field(default_factory=dict)

    def side(self, suffix: str) -> Path:
        temporary = self.path.with_name(self.path.name + suffix)
        self.sides[temporary] = self.final.with_name(self.final.name + suffix)
        return temporary


@dataclass(frozen=True)
class CommandProcessor:
    template: str
    uses_output: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uses_output", "{output}" in self.template)
        unknown = set(re.findall(r"\{(\w*)\}", self.template)) - {"input", "output", "name"}
        if unknown:
            raise ValidationError(
                f"processor template uses {{{sorted(unknown)[0]}}}; only {{input}}, {{output}} and {{name}} exist"
            )
        shape = self.shape
        if shape.problem:
            raise ValidationError(f"processor template: {shape.problem.replace('VALUE', '{input}')}")
        chooser = next((slot for slot in shape.slots if slot.program), None)
        if chooser is not None:
            raise ValidationError(
                f"processor template: line {chooser.line} of the command: a placeholder chooses what runs "
                "(a command's name, the command a wrapper such as `sudo` or `xargs` runs, or the script a "
                "shell, an interpreter or `source` runs), so a file name could run anything — write the "
                "program literally and pass the file as its argument"
            )
        arithmetic = next((slot for slot in shape.slots if slot.kind == ARITH), None)
        if arithmetic is not None:
            raise ValidationError(
                f"processor template: line {arithmetic.line} of the command: a placeholder lands in "
                "arithmetic (`$(( ))`, `a[...]`), where bash evaluates text such as `a[$(cmd)]` in a file "
                "name — pass it to a program as an argument instead"
            )

    @property
    def identity(self) -> str:
        return f"command:{self.template}"

    def output_name(self, input_path: Path) -> str:
        return input_path.name

    def argv_or_script(
        self, input_path: Path, output_path: Path | None, *, name: str | None = None
    ) -> str | list[str]:
        values = {
            "input": str(input_path),
            "output": str(output_path or ""),
            "name": input_path.name if name is None else name,
        }
        slots = iter(self.shape.slots)

        def value(match: re.Match[str], slot: Slot) -> str:
            text = values[match.group(1)]
            try:
                check_value(slot, text, shown=f"{{{match.group(1)}}}")
            except UnsafeValue as exc:
                raise ProcessingFailed(str(exc)) from None
            return text

        literal = PLACEHOLDER.sub("", self.template)
        if not SHELL_SYNTAX.search(literal):
            # No shell syntax: split the template, then substitute whole words; no shell, no quoting needed.
            return [PLACEHOLDER.sub(lambda m: value(m, next(slots)), w) for w in shlex.split(self.template)]
        # Each value quoted for where it stands: `cat "{input}"` must not run `$(...)` in a file name.
        return PLACEHOLDER.sub(lambda m: quote_text(slot := next(slots), value(m, slot)), self.template)

    @property
    def shape(self) -> Shape:
        """Where each placeholder lands (flows/shellquote.py)."""
        parts: list[str | Hole] = []
        pos = 0
        for match in PLACEHOLDER.finditer(self.template):
            parts += [self.template[pos : match.start()], Hole()]
            pos = match.end()
        return analyse([*parts, self.template[pos:]])

    def process(
        self, input_path: Path, output: Output | None, timeout: float | None, fd: int | None = None
    ) -> str:
        errors: list[str] = []
        with opened_name(input_path, fd) as readable:
            command = self.argv_or_script(readable, output.path if output else None, name=input_path.name)
            result = run_command(
                command,
                timeout=timeout,
                pass_fds=() if fd is None else (fd,),  # the command and what it starts read this file
                on_line=lambda stream, line: errors.append(line) if stream == "stderr" else None,
            )
        if result.timed_out:
            raise ProcessingFailed(f"timed out after {timeout:g}s (process group killed)")
        if result.exit_code != 0:
            tail = " | ".join(errors[-3:]) or "no error output"
            raise ProcessingFailed(f"exit code {result.exit_code}: {tail}")
        return ""


@dataclass(frozen=True)
class CallableProcessor:
    target: str  # module:function

    @property
    def function(self) -> Any:
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValidationError(f"processor {self.target}: cannot import {module_name} ({exc})") from None
        function = getattr(module, attr, None)
        if not callable(function):
            raise ValidationError(f"processor {self.target}: {module_name} has no function {attr}")
        return function

    @property
    def identity(self) -> str:
        # The function's source is part of the identity, so editing it reprocesses the inputs.
        import inspect

        try:
            source = inspect.getsource(self.function)
        except (OSError, TypeError):
            source = ""
        return f"python:{self.target}:{hashlib.sha256(source.encode()).hexdigest()[:16]}"

    def output_name(self, input_path: Path) -> str:
        return input_path.name

    def process(
        self, input_path: Path, output: Output | None, timeout: float | None, fd: int | None = None
    ) -> str:
        try:
            with opened_name(input_path, fd) as readable:
                note = self.function(readable, output.path if output else None)
        except Exception as exc:  # the user's function: any error is this file's failure
            raise ProcessingFailed(f"{type(exc).__name__}: {exc}") from None
        return "" if note is None else str(note)


@dataclass(frozen=True)
class RecordsProcessor:
    """Validate JSON / JSON Lines / CSV records against a JSON Schema, write them as JSON Lines.

    Valid records go to the output; every invalid one is reported with its record number and
    the schema's complaint in `<output>.errors.jsonl`. A file with any invalid record fails (so
    it is retried, then falls back, then lands in the dead-letter queue with the first error).
    """

    schema_path: Path
    schema: dict[str, Any] = field(compare=False, repr=False)

    @classmethod
    def load(cls, schema_path: str) -> RecordsProcessor:
        path = Path(schema_path)
        text = read_user_text(path, what="schema file")
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"not a readable JSON schema ({exc})", where=str(path)) from None
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValidationError(f"invalid JSON Schema: {exc.message}", where=str(path)) from None
        return cls(path, schema)

    @property
    def identity(self) -> str:
        digest = hashlib.sha256(json.dumps(self.schema, sort_keys=True).encode()).hexdigest()[:16]
        return f"records:{digest}"

    def output_name(self, input_path: Path) -> str:
        # a.json and a.csv must not both become a.jsonl
        return input_path.name if input_path.suffix == ".jsonl" else input_path.name + ".jsonl"

    def process(
        self, input_path: Path, output: Output | None, timeout: float | None, fd: int | None = None
    ) -> str:
        from jsonschema import Draft202012Validator

        records = _read_records(input_path, fd)
        if input_path.suffix.lower() == ".csv":
            records = [_typed(record, self.schema) for record in records]
        validator = Draft202012Validator(self.schema)
        valid, errors = [], []
        for number, record in enumerate(records, start=1):
            problems = sorted(validator.iter_errors(record), key=lambda e: list(e.path))
            if problems:
                where = "/".join(str(p) for p in problems[0].path) or "(record)"
                errors.append({"record": number, "field": where, "error": problems[0].message})
            else:
                valid.append(record)
        if output is not None:
            with open(output.path, "w", encoding="utf-8") as out:
                out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in valid)
            if errors:
                report = output.side(".errors.jsonl")
                report.write_text("".join(json.dumps(e) + "\n" for e in errors), encoding="utf-8")
        if errors:
            first = errors[0]
            raise ProcessingFailed(
                f"{len(errors)} of {len(errors) + len(valid)} records invalid; "
                f"record {first['record']} {first['field']}: {first['error']}"
            )
        return f"{len(valid)} records"


def _typed(record: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """CSV cells are text: convert those the schema declares integer, number or boolean (when they
    parse), so a typed schema can validate CSV at all; what does not parse stays text and fails."""
    properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
    typed = dict(record)
    for key, value in record.items():
        declared = properties.get(key, {}).get("type") if isinstance(properties.get(key), dict) else None
        kinds = declared if isinstance(declared, list) else [declared]
        if not isinstance(value, str) or "string" in kinds:
            continue
        for kind, convert in (("integer", int), ("number", float), ("boolean", _boolean)):
            if kind in kinds:
                try:
                    typed[key] = convert(value.strip())
                    break
                except ValueError:
                    continue
    return typed


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(text)


def _read_records(path: Path, fd: int | None = None) -> list[Any]:
    try:
        if fd is None:
            with open_regular(path) as handle:  # an input swapped for a FIFO must not hang the batch
                text = handle.read().decode("utf-8")
        else:
            with open(os.dup(fd), "rb") as handle:  # the file opened and checked, from its start
                handle.seek(0)
                text = handle.read().decode("utf-8")
    except UnicodeDecodeError:
        raise ProcessingFailed("not UTF-8 text (binary file?)") from None
    except OpsflowError as exc:
        raise ProcessingFailed(exc.message) from None
    except OSError as exc:
        raise ProcessingFailed(f"cannot read: {exc.strerror}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return list(csv.DictReader(io.StringIO(text)))
        if suffix in (".jsonl", ".ndjson"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProcessingFailed(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except csv.Error as exc:
        raise ProcessingFailed(f"malformed CSV: {exc}") from None
    return data if isinstance(data, list) else [data]


def parse_processor(spec: str) -> Processor:
    """`records:SCHEMA`, `module:function`, or a command template using `{input}`."""
    spec = spec.strip()
    if not spec:
        raise ValidationError("--processor is empty")
    if spec.startswith("records:"):
        return RecordsProcessor.load(spec.removeprefix("records:"))
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        processor = CallableProcessor(spec)
        processor.function  # noqa: B018 - import now so a typo fails before any file is touched
        return processor
    if "{input}" not in spec and "{name}" not in spec:
        raise ValidationError(
            f"processor `{spec}` is not `records:SCHEMA.json`, `module:function`, or a command using {{input}}"
        )
    return CommandProcessor(spec)
