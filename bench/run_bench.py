"""opsflow benchmarks: each target is a ratio against a baseline run side by side.

    .venv/bin/python bench/run_bench.py [--repeat N] [--json FILE]

Whole commands are timed, start-up included, best of N (default 3) for each. The local
Prefect server that `opsflow run` reuses is started before timing (as it would already be
running on a machine where opsflow was used once); the baseline hello-world flow runs in
Prefect's default ephemeral mode, as a plain Prefect user would run it, and also against the
same running server so the table shows where the difference comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def timed(argv: list[str] | str, *, env: dict[str, str] | None = None, shell: bool = False) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, shell=shell, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"benchmark command failed ({done.returncode}): {argv}\n{done.stderr[-2000:]}")
    return elapsed


def best(repeat: int, argv: list[str] | str, **kwargs) -> float:
    return min(timed(argv, **kwargs) for _ in range(repeat))


def write_inputs(folder: Path) -> dict[str, Path]:
    wide = "\n".join(f"      - name: s{i:03d}\n        command: sleep 0.1" for i in range(100))
    (folder / "wide.yaml").write_text(
        f"name: wide\nsteps:\n  - name: all\n    parallel: true\n    steps:\n{wide}\n"
    )
    (folder / "one.yaml").write_text("name: one\nsteps:\n  - name: hello\n    command: echo hello\n")
    big = "\n".join(
        f"  - name: s{i:03d}\n    command: echo {{{{ .environment }}}} {i} --tag {{{{ .tag }}}}\n"
        f"    timeout: 5\n    retry: {{attempts: 2, delay: 1s}}"
        + (f"\n    depends_on: [s{i - 1:03d}]" if i else "")
        for i in range(200)
    )
    (folder / "v200.yaml").write_text(
        f"name: v200\nparameters:\n  - name: tag\n    default: v1\nsteps:\n{big}\n"
    )
    (folder / "hello.py").write_text(
        "from prefect import flow\n\n@flow\ndef hello():\n    print('hello')\n\nif __name__ == '__main__':\n    hello()\n"
    )
    return {name: folder / f"{name}.yaml" for name in ("wide", "one", "v200")} | {
        "hello": folder / "hello.py"
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the best is kept")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    base_env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    base_env.pop("PREFECT_API_URL", None)
    ephemeral_env = dict(base_env, OPSFLOW_SERVER="ephemeral")
    opsflow = [PYTHON, "-m", "flows.batch"]
    with tempfile.TemporaryDirectory(prefix="opsflow-bench-") as tmp:
        files = write_inputs(Path(tmp))
        # Start (or find) the local server outside the timings, as a first `opsflow run` does.
        timed([*opsflow, "run", str(files["one"]), "-q"], env=base_env)
        server_env = dict(base_env, PREFECT_API_URL="http://127.0.0.1:4200/api")

        rows = []
        wide = best(args.repeat, [*opsflow, "run", str(files["wide"]), "--parallel", "2", "-q"], env=base_env)
        xargs = best(args.repeat, "seq 100 | xargs -P2 -I{} sleep 0.1", shell=True)
        rows.append(("100 × sleep 0.1, --parallel 2", "xargs -P2", wide, xargs, 3.0, "≤"))

        cold = best(args.repeat, [*opsflow, "run", str(files["one"]), "-q"], env=base_env)
        hello = best(args.repeat, [PYTHON, str(files["hello"])], env=ephemeral_env)
        hello_server = best(args.repeat, [PYTHON, str(files["hello"])], env=server_env)
        rows.append(("cold run, 1-step workflow", "hello-world flow (ephemeral)", cold, hello, 0.4, "≤"))
        rows.append(
            ("cold run, 1-step workflow", "hello-world flow (same server)", cold, hello_server, None, "")
        )

        validate = best(args.repeat, [*opsflow, "validate", "-q", str(files["v200"])], env=base_env)
        imports = best(args.repeat, [PYTHON, "-c", "import yaml, pydantic"])
        rows.append(("validate, 200 steps", 'python -c "import yaml, pydantic"', validate, imports, 3.0, "<"))

    print(f"{'benchmark':<32} {'baseline':<34} {'opsflow':>9} {'baseline':>9} {'ratio':>7}  goal")
    results = []
    for name, baseline, ours, theirs, goal, op in rows:
        ratio = ours / theirs
        met = (
            "" if goal is None else (" met" if (ratio <= goal if op == "≤" else ratio < goal) else " MISSED")
        )
        goal_text = "-" if goal is None else f"{op} {goal:g}×{met}"
        print(f"{name:<32} {baseline:<34} {ours:>8.2f}s {theirs:>8.2f}s {ratio:>6.2f}×  {goal_text}")
        results.append(
            {"benchmark": name, "baseline": baseline, "opsflow_s": ours, "baseline_s": theirs, "ratio": ratio}
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if shutil.which("nproc"):
        print(f"(best of {args.repeat}; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
