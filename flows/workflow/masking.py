"""Secrets out of every line a step prints, before it reaches the Prefect log or the
aggregated log: the values the records mask (`safe_parameters`), in every form a command may
print them, and passwords inside URLs. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from flows.maintenance.record import safe_parameters, scrub_text

MASKED = "**********"  # what the records write for a secret (state.MASKED)


class Masker:
    """Replaces every secret value with `**********`, and passwords in URLs with `***`."""

    def __init__(self, secrets: list[str]) -> None:
        # longest first, so a secret that contains another is masked whole
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    @classmethod
    def for_parameters(cls, parameters: Mapping[str, Any]) -> Masker:
        """The values the records mask (`safe_parameters`), in every form a command may print."""
        safe = safe_parameters(dict(parameters))
        secrets: list[str] = []
        for name, value in parameters.items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif safe.get(name) != MASKED or isinstance(value, bool):
                continue
            if isinstance(value, list | tuple):
                items = [str(v) for v in value]
                secrets += [*items, ",".join(items), " ".join(items), json.dumps(list(value))]
            elif isinstance(value, dict):
                secrets.append(json.dumps(value))
            elif value is not None:
                secrets.append(str(value))
        return cls(secrets)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASKED)
        return scrub_text(text)
