"""Secret values out of every line: by value, in every form a command may print them.

A `Masker` holds the values of one run (secret parameters, secret captured outputs, a
notification URL, secrets of the environment) and replaces each with `**********`; passwords
inside URLs become `***` whatever they are. While a flow run is `masking(...)`, every log
record of this process goes through the active maskers before any handler writes it (the
terminal, Prefect's API handler, the live view), so a secret inside an error message, a
traceback or Prefect's own "Finished in state" line is masked too; `mask` applies them to text
that goes elsewhere (state messages, artifacts, records).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pydantic import SecretStr

from flows.console import escape_controls
from flows.errors import OpsflowError
from flows.secrets import MASKED, is_secret_name, reference, reveal, scrub_text

# A value shorter than this is not masked in output: `token_ttl: 60` or a 3-letter "secret" would
# turn every 60 in every line into stars and hide nothing (numbers and flags are no secrets).
SHORTEST = 4
# Environment variables whose values are masked in every line: names that can only mean a secret
# (not `SSH_AUTH_SOCK` or `XDG_SESSION_ID`), with values long enough to be one.
_ENV_SECRET = re.compile(
    r"password|passwd|passphrase|secret|token|credential|api_?key|access_?key|private_?key", re.I
)
_ENV_SHORTEST = 8


class Masker:
    """Replaces every secret value with `**********`, and passwords in URLs with `***`."""

    def __init__(self, secrets: Iterable[Any] = ()) -> None:
        self.secrets: list[str] = []
        self._lock = threading.Lock()
        self.add(secrets)

    def add(self, values: Iterable[Any]) -> None:
        """More secrets (strings or lists of them), e.g. a step's secret output once captured."""
        forms: set[str] = set()
        for value in values:
            forms |= _forms(reveal(value))
        with self._lock:
            # longest first, so a secret that contains another is masked whole
            self.secrets = sorted(set(self.secrets) | forms, key=len, reverse=True)

    @classmethod
    def for_parameters(
        cls, parameters: Mapping[str, Any], is_secret: Callable[[str], bool] = is_secret_name
    ) -> Masker:
        """The secret parameters' values (SecretStr, or named or declared secret)."""
        return cls(
            value
            for name, value in parameters.items()
            if (isinstance(value, SecretStr) or is_secret(name)) and not reference(value)
        )

    @property
    def longest(self) -> int:
        """Characters of the longest form of a secret (0 without secrets)."""
        secrets = self.secrets
        return len(secrets[0]) if secrets else 0

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASKED)
        return scrub_text(text)


def _forms(value: Any) -> set[str]:
    """A value as a command may print it: whole, line by line, list items joined, JSON-escaped,
    percent-encoded (a password inside a URL), and quoted as shells and their tools print it
    (`set -x`, `printf %q`, `${x@Q}`, `declare -p`, Python's `shlex.quote`)."""
    if isinstance(value, dict):  # a variable's mapping: each value, and the mapping as JSON
        forms = {json.dumps(value, default=str), json.dumps(value, default=str, ensure_ascii=False)}
        for item in value.values():
            forms |= _forms(item)
        return {f for f in forms if len(f) >= SHORTEST}
    if isinstance(value, list | tuple):
        items = [str(v) for v in value if isinstance(v, str | int | float) and len(str(v)) >= SHORTEST]
        forms = {",".join(items), " ".join(items), json.dumps(items)} if items else set()
        forms.add(json.dumps(value, default=str))
        for item in value:  # nested lists and mappings too
            forms |= _forms(item)
        return {f for f in forms if len(f) >= SHORTEST}
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # a secret typed `int`/`float` is printed as its digits
    if not isinstance(value, str):
        return set()
    forms = {value, value.strip(), *value.splitlines()}
    for form in list(forms):
        quoted = shell_quoted(form)
        # `set -x` quotes the words of a command again, a value quoted by `${x@Q}` or `%q` too
        forms |= quoted | {q.replace("'", "'\\''") for q in quoted}
        forms |= {json.dumps(form)[1:-1], json.dumps(form, ensure_ascii=False)[1:-1]}
        forms |= {urllib.parse.quote(form, safe=""), urllib.parse.quote(form), urllib.parse.quote_plus(form)}
    return {f for f in forms if len(f.strip()) >= SHORTEST}


# What `printf %q` puts a backslash before (bash's sh_backslash_quote); `#` and `~` only where
# they would start a comment or a tilde expansion.
_BACKSLASHED = frozenset(" \t\n'\"\\|&;()<>!{}*[?]^$`,")
# How `$'...'` writes characters (bash's ansic_quote); other unprintable ones as octal bytes.
_ANSI_C = {
    "\a": "\\a", "\b": "\\b", "\x1b": "\\E", "\f": "\\f", "\n": "\\n", "\r": "\\r",
    "\t": "\\t", "\v": "\\v", "\\": "\\\\", "'": "\\'",
}  # fmt: skip


def shell_quoted(value: str) -> set[str]:
    """`value` as it stands inside the quoted words shells print, without the quotes around it
    (so it is found inside a longer quoted word too): `'...'` (bash's `'\\''`, Python's
    `'"'"'`), `"..."`, `$'...'` (raw or octal non-ASCII), and backslash-escaped (`printf %q`,
    a leading `#`/`~` escaped or not)."""
    forms = {
        value.replace("'", "'\\''"),
        value.replace("'", "'\"'\"'"),
        "".join("\\" + c if c in '\\"$`' else c for c in value),
        _ansi_c(value, raw_unicode=True),
        _ansi_c(value, raw_unicode=False),
    }
    if all(c.isprintable() or c in "\t\n" for c in value):
        forms |= {_backslashed(value, starts_word=True), _backslashed(value, starts_word=False)}
    return forms


def _ansi_c(value: str, *, raw_unicode: bool) -> str:
    out = []
    for char in value:
        if char in _ANSI_C:
            out.append(_ANSI_C[char])
        elif char.isprintable() and (raw_unicode or char.isascii()):
            out.append(char)
        else:
            out += [f"\\{byte:03o}" for byte in char.encode("utf-8", "surrogateescape")]
    return "".join(out)


def _backslashed(value: str, *, starts_word: bool) -> str:
    out = []
    for i, char in enumerate(value):
        first = i == 0 and starts_word
        after = value[i - 1] if i else ""
        special = (
            char in _BACKSLASHED
            or (char == "#" and first)
            or (char == "~" and (first or after in ("=", ":")))
        )
        out.append("\\" + char if special else char)
    return "".join(out)


def mask_data(data: Any, masker: Callable[[str], str]) -> Any:
    """Every string inside `data` (dicts, lists) masked; for JSON documents and artifacts."""
    if isinstance(data, str):
        return masker(data)
    if isinstance(data, dict):
        return {key: mask_data(value, masker) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [mask_data(value, masker) for value in data]
    return data


def masked_error(err: OpsflowError, masker: Callable[[str], str]) -> OpsflowError:
    """The same error (same class, exit code, `where`) with its message masked."""
    message = masker(err.message)
    if message == err.message:
        return err
    masked = err.__class__.__new__(err.__class__)
    masked.__dict__.update(vars(err))
    Exception.__init__(masked, message, err.where)
    masked.message = message
    return masked


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables that hold secrets (`*_TOKEN`, `*_PASSWORD`, `*_SECRET`,
    `*_API_KEY`...) and of notification channels (`OPSFLOW_NOTIFY_*`, apprise URLs)."""
    environ = os.environ if environ is None else environ
    found = []
    for name, value in environ.items():
        if name.startswith("OPSFLOW_NOTIFY_"):
            found += [u for u in re.split(r"[\s,]+", value) if len(u) >= _ENV_SHORTEST]
        elif _ENV_SECRET.search(name) and len(value) >= _ENV_SHORTEST:
            found.append(value)
    return found


# -- every log record of the process, while a run masks -----------------------------------------
_active: list[Masker] = []
_active_lock = threading.Lock()


def mask(text: str) -> str:
    """`text` with the secrets of every run masking in this process removed."""
    for masker in list(_active):
        text = masker(text)
    return scrub_text(text)


def longest_secret(masker: Callable[[str], str] | None = None) -> int:
    """Characters of the longest secret `masker` (a `Masker`, else every run masking in this
    process) masks: how much more of a long line to read so that none is cut in two."""
    maskers = [masker] if isinstance(masker, Masker) else list(_active)
    return max((m.longest for m in maskers), default=0)


@contextlib.contextmanager
def masking(masker: Masker) -> Iterator[Masker]:
    """While the body runs, every log record (and `mask`) masks `masker`'s secrets."""
    with _active_lock:
        _active.append(masker)
    install_log_filter()
    try:
        yield masker
    finally:
        with _active_lock:
            _active.remove(masker)


class MaskingFilter(logging.Filter):
    """Masks a record's message (and traceback) before a handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_opsflow_masked", False):
            return True  # the record went through another handler's filter already
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the handler's to report
            return True
        if not _active:  # between runs: passwords inside URLs only
            record.msg, record.args = (
                escape_controls(scrub_text(message) if "://" in message else message),
                None,
            )
            return True
        record.msg, record.args = escape_controls(mask(message)), None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        record._opsflow_masked = True
        return True


_FILTER = MaskingFilter()


def install_log_filter() -> None:
    """Put the masking filter on every handler of every logger (once each); handlers added
    later (a live view, a worker's) get it when the next run starts masking."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
