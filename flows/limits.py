"""The largest counts any option, setting or workflow field accepts (durations: durations.py).

A value past these is a typo or an attempt to exhaust the machine (a million threads, a
million retries, an exabyte reservation): it is refused where it is given, naming the field.
"""

from __future__ import annotations

#: Steps (or files) running at once: `--parallel`, `OPSFLOW_PARALLEL`, `parallel_limit`,
#: `resource_limits.max_parallel`, `files run --workers`.
MAX_PARALLEL = 1000
#: Retries of one step or file: `retry.attempts` counts the first try too.
MAX_RETRIES = 100
#: Memory one step or run may reserve: 1 PiB.
MAX_MEMORY_BYTES = 2**50
MAX_MEMORY_TEXT = "1Pi"
#: CPU cores one step or run may reserve.
MAX_CPU = 10_000
