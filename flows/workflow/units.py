"""Durations, memory sizes and CPU amounts as workflow files write them."""

from __future__ import annotations

import math
import re

from flows.durations import check_duration
from flows.limits import MAX_CPU, MAX_MEMORY_BYTES, MAX_MEMORY_TEXT

# Words a condition or a bool parameter may be written as (case-insensitive).
TRUE_WORDS = frozenset({"true", "yes", "y", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "n", "off", "0", "none", ""})

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGTP]i?|[KMGTP]B|B)?$")
_MEMORY_UNITS = {
    "B": 1,
    "K": 10**3,
    "KB": 10**3,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "P": 10**15,
    "PB": 10**15,
    "Pi": 2**50,
}


def parse_duration(value: object) -> float:
    """Seconds from `90`, `"90"`, `"30s"`, `"5m"`, `"1h30m"`, `"7d"` or `"250ms"`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30, '30s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"expected a duration such as 30, '30s', '5m' or '1h30m', got {value!r}"
                ) from None
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration such as 30, '30s' or '5m', got {value!r}")
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, not {value!r}")
    return check_duration(seconds, value)


def parse_timeout(value: object) -> float:
    """A duration (parse_duration) that is more than zero: a timeout of 0 would end at once."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"a timeout must be more than 0 seconds, got {value!r}")
    return seconds


def parse_memory(value: object) -> int:
    """Bytes from `"512Mi"`, `"2Gi"`, `"1G"`, `"100MB"` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a memory size such as '512Mi' or '2Gi', got {value!r}")
    if isinstance(value, int | float):
        size = float(value)
    else:
        match = _MEMORY.match(str(value).strip())
        if not match:
            raise ValueError(f"expected a memory size such as '512Mi' or '2Gi', got {value!r}")
        number, unit = match.groups()
        size = float(number) * _MEMORY_UNITS[unit or "B"]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"a memory size must be at least 1 byte, got {value!r}")
    if size > MAX_MEMORY_BYTES:
        raise ValueError(f"a memory size may be at most {MAX_MEMORY_TEXT}, got {value!r}")
    return int(size)


def parse_cpu(value: object) -> float:
    """Cores from `"2"`, `2`, `"0.5"` or millicores `"500m"`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a CPU amount such as '0.5', '2' or '500m', got {value!r}")
    text = str(value).strip()
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise ValueError(f"expected a CPU amount such as '0.5', '2' or '500m', got {value!r}") from None
    if cores <= 0 or not math.isfinite(cores):
        raise ValueError(f"a CPU amount must be positive, got {value!r}")
    if cores > MAX_CPU:
        raise ValueError(f"a CPU amount may be at most {MAX_CPU:,} cores, got {value!r}")
    return cores


def format_memory(size: int) -> str:
    """`512Mi`, `2Gi`, `1.5Gi` or bytes: the binary unit that keeps the number readable."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        scale = _MEMORY_UNITS[unit]
        if size >= scale:
            return f"{size / scale:.4g}{unit}"
    return f"{size}B"


def format_cpu(cores: float) -> str:
    return f"{cores:g}"


def format_duration(seconds: float) -> str:
    """A short human form: `850ms`, `12.3s`, `4m05s`, `2h03m`."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
