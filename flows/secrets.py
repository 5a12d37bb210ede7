"""What a secret is, how it is kept out of stored values, and how it is passed by reference.

- A *secret name*: a parameter or variable named with a word such as password, passphrase,
  secret, token, key (`api_key`, `sshKey`; not `monkey`), credential, auth, dsn, private,
  cookie or session. A workflow parameter may also say `secret: true` / `secret: false`.
- `safe_parameters`: parameters as they may be stored (records, logs, artifacts): secrets
  masked, passwords inside URLs removed.
- A *reference*: `env:NAME` (an environment variable of the process running the flow) or
  `block:NAME` (a Prefect Secret block), resolved inside the flow run, so a deployment run's
  stored parameters hold only the reference.
- `refuse_plain_secrets`: a secret that arrived in clear in a flow run's parameters is taken
  out of the stored run (Prefect's API keeps parameters) and refused.

Pure but for `resolve_reference` (`block:` loads a Prefect block) and `scrub_flow_run`.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from flows.errors import ValidationError

MASKED = "**********"  # what records, logs and artifacts show instead of a secret (as SecretStr does)

# Passwords inside URLs (`scheme://user:PASSWORD@`) are found by a scan that reads each character
# a bounded number of times: a regular expression (`[^@\s]+@` after every `://`) rescans the rest of
# the line from each `://`, and a 100 kB line of `a://:` took minutes.
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_SCHEME_LONGEST = 32  # no scheme is longer; an unbounded one would rescan long words
_USER_END = re.compile(r"[:/@\s]")  # a user name ends at its `:` (or is no user name)
_SPACE = re.compile(r"\s")  # a URL ends at whitespace
_AT = re.compile("@")

# Whole words of a name (`db_password`, `apiKey`, `ssh-key`): "key" must not match "monkey".
_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "passphrase", "pass", "secret", "secrets", "token", "tokens",
        "key", "keys", "apikey", "credential", "credentials", "creds", "auth", "authorization",
        "oauth", "dsn", "private", "privkey", "cookie", "cookies", "session", "sessions",
    }
)  # fmt: skip
# Parts that make a name secret wherever they stand (`dbpassword`, `authtoken`, `clientsecret`).
_SECRET_PARTS = ("password", "passwd", "passphrase", "secret", "token", "credential", "apikey", "privatekey")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

REFERENCE = re.compile(r"(?P<kind>env|block):(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)")
REFERENCE_HINT = "env:NAME (an environment variable of the flow run) or block:NAME (a Prefect Secret block)"


def name_words(name: str) -> list[str]:
    """`db_password` -> [db, password]; `apiKey` -> [api, key]; `SSH-KEY` -> [ssh, key]."""
    return [w.lower() for w in _WORD.findall(name)]


def is_secret_name(name: str) -> bool:
    """Whether a name says its value is a secret (password, token, api_key, dsn, session...)."""
    if any(word in _SECRET_WORDS for word in name_words(name)):
        return True
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    return any(part in flat for part in _SECRET_PARTS)


def url_passwords(text: str) -> list[tuple[int, int]]:
    """Where passwords inside URLs stand in `text` ((start, end) of each, left to right): the
    `PASSWORD` of `scheme://user:PASSWORD@`, up to the last `@` before whitespace (a password
    may hold an `@` unencoded: `u:p@ss@host` is masked to `u:***@host`, never `u:***@ss@host`).
    Linear in the length of `text`, whatever it holds."""
    spans: list[tuple[int, int]] = []
    ats: list[int] = []  # every `@` and every whitespace position, found once when needed
    spaces: list[int] | None = None
    done = 0  # where the last password found ended: URLs do not overlap
    at = text.find("://")
    while at != -1:
        if at >= done and _has_scheme(text, at, done):
            stop = _USER_END.search(text, at + 3)
            if stop is not None and stop.group() == ":":
                if spaces is None:
                    spaces = [m.start() for m in _SPACE.finditer(text)]
                    ats = [m.start() for m in _AT.finditer(text)]
                i = bisect.bisect_right(spaces, stop.start())
                url_end = spaces[i] if i < len(spaces) else len(text)
                j = bisect.bisect_left(ats, url_end) - 1
                end = ats[j] if j >= 0 else -1
                if end > stop.start() + 1:
                    spans.append((stop.start() + 1, end))
                    done = end + 1
        at = text.find("://", at + 1)
    return spans


def _has_scheme(text: str, at: int, floor: int) -> bool:
    """Whether a scheme (a letter, then letters, digits, `+.-`: at most 32) ends at `at`."""
    for i in range(at - 1, max(floor, at - _SCHEME_LONGEST) - 1, -1):
        char = text[i]
        if char not in _SCHEME_CHARS:
            return False
        if char.isascii() and char.isalpha():
            return True
    return False


def scrub_text(text: str) -> str:
    """`text` with passwords inside URLs replaced by ***."""
    if "://" not in text:
        return text
    spans = url_passwords(text)
    if not spans:
        return text
    parts, pos = [], 0
    for start, end in spans:
        parts += [text[pos:start], "***"]
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def was_scrubbed(text: str) -> bool:
    """Whether `text` holds a URL whose password `scrub_text` removed."""
    at = text.find("://")
    while at != -1:
        if _has_scheme(text, at, 0):
            stop = _USER_END.search(text, at + 3)
            if stop is not None and stop.group() == ":" and text.startswith("***@", stop.end()):
                return True
        at = text.find("://", at + 1)
    return False


def reveal(value: Any) -> Any:
    """A SecretStr's value; anything else as it is."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def reference(value: Any) -> tuple[str, str] | None:
    """(kind, name) when `value` is a reference (`env:NAME`, `block:NAME`), else None."""
    if not isinstance(value, str):
        return None
    match = REFERENCE.fullmatch(value.strip())
    return (match["kind"], match["name"]) if match else None


def resolve_reference(value: str, what: str, *, kinds: Iterable[str] = ("env", "block")) -> str | None:
    """The secret a reference points to; `what` names it in errors (never its value). A kind not
    in `kinds` is left for later (None): `plan` does not load blocks (that needs the Prefect
    API), `schedule add` reads no environment (the worker's is the one that counts)."""
    kind, name = reference(value) or ("", "")
    if not kind:
        raise ValidationError(f"{what}: not a reference — give {REFERENCE_HINT}")
    if kind not in kinds:
        return None
    if kind == "env":
        if name not in os.environ:
            raise ValidationError(f"{what}: the environment variable {name} (from `env:{name}`) is not set")
        return os.environ[name]
    return _secret_block(name, what)


def _secret_block(name: str, what: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError as exc:
        raise ValidationError(f"{what}: no Prefect Secret block named {name!r} ({exc})") from None
    return value if isinstance(value, str) else str(value)


def safe_parameters(
    parameters: Mapping[str, Any], is_secret: Callable[[str], bool] = is_secret_name
) -> dict[str, Any]:
    """Parameters as they may be recorded: secrets masked, URL passwords removed, references
    (`env:NAME`, `block:NAME`) kept, since they name a secret without holding it."""
    safe: dict[str, Any] = {}
    for key, value in parameters.items():
        if value is None:
            continue
        if reference(reveal(value)):
            safe[key] = reveal(value).strip()
        elif isinstance(value, SecretStr):
            # a connection URL's host is worth keeping when only its password is secret
            keep_host = key.endswith("_url") and not is_secret(key)
            safe[key] = scrub_text(value.get_secret_value()) if keep_host else MASKED
        elif is_secret(key):
            safe[key] = MASKED
        elif isinstance(value, str):
            safe[key] = scrub_text(value)
        elif isinstance(value, list | tuple):
            safe[key] = [scrub_text(v) if isinstance(v, str) else v for v in value]
        else:
            safe[key] = value if isinstance(value, int | float | bool) else scrub_text(str(value))
    return safe


def plain_secrets(values: Mapping[str, Any], is_secret: Callable[[str], bool]) -> list[str]:
    """Names of secret values given in clear: neither a SecretStr (which Prefect stores
    obscured) nor a reference. Empty values are no secrets."""
    return sorted(
        name
        for name, value in values.items()
        if is_secret(name)
        and value not in (None, "", [])
        and not isinstance(value, SecretStr)
        and not reference(value)
    )


def clear_secret_paths(
    params: Mapping[str, Any], is_secret: Callable[[str], bool], prefix: str = ""
) -> list[str]:
    """Where secrets stand in clear in parameters about to be sent to the Prefect API: values
    under a secret name (at any depth) or holding a URL with a password; references excluded."""
    found = []
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found += clear_secret_paths(value, is_secret, f"{path}.")
        elif reference(value) or value in (None, "", []):
            continue
        elif is_secret(key) or any(isinstance(v, str) and scrub_text(v) != v for v in _items(value)):
            found.append(path)
    return found


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def refuse_plain_secrets(names: Iterable[str], where: str = "parameters") -> None:
    """Take the named values out of the current flow run's stored parameters and refuse the
    run: they reached the Prefect API in clear (a deployment run given a literal secret).
    `where`: the flow parameter (a dict) holding them, or "" for top-level parameters."""
    names = sorted(names)
    if not names:
        return
    scrub_flow_run(names, where)
    listed = ", ".join(f"`{n}`" for n in names)
    raise ValidationError(
        f"secret {listed} came in clear in the flow run's parameters, which the Prefect API keeps "
        f"(removed from this run; change the secret if others can read the API) — pass {REFERENCE_HINT}"
    )


def scrub_flow_run(names: Iterable[str], where: str = "parameters") -> None:
    """Replace these parameters of the current flow run, as the Prefect API stores them, with
    `**********`. Best effort: a run that cannot be updated is still refused."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.runtime import flow_run
    except ImportError:  # pragma: no cover
        return
    if not flow_run.id:
        return
    try:
        with get_client(sync_client=True) as client:
            stored = dict(client.read_flow_run(flow_run.id).parameters or {})
            target = stored.get(where) if where else stored
            if not isinstance(target, dict):
                return
            for name in names:
                if name in target:
                    target[name] = MASKED
            client.update_flow_run(flow_run.id, parameters=stored)
    except Exception:  # noqa: BLE001 - the refusal below matters more than the clean-up
        return
