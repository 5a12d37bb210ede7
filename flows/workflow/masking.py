"""Secrets out of every line a step prints, before it reaches the Prefect log or the
aggregated log: the values the records mask (`safe_parameters`), in every form a command may
print them, and passwords inside URLs. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from flows.maintenance.record import MASKED, safe_parameters, scrub_text

# A value shorter than this is not masked in output: `token_ttl: 60` or a 3-letter "secret" would
# turn every 60 in every line into stars and hide nothing (numbers and flags are no secrets).
SHORTEST = 4


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
            elif safe.get(name) != MASKED:
                continue
            if isinstance(value, list | tuple):
                items = [str(v) for v in value if isinstance(v, str) and len(v) >= SHORTEST]
                if items:
                    secrets += [*items, ",".join(items), " ".join(items), json.dumps(items)]
            elif isinstance(value, str) and len(value) >= SHORTEST:
                secrets.append(value)
        return cls(secrets)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASKED)
        return scrub_text(text)
