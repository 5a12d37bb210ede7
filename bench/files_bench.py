"""Batch file processing benchmarks, side by side in one run, printed as a table.

    .venv/bin/python bench/files_bench.py [--files 1000] [--large]

- N small files through `cp {input} {output}` vs `xargs -P2` running the same cp;
- the same batch with one Prefect task per file (`--chunk-size 1`);
- a re-run of the unchanged batch vs the first run;
- with --large: 10,000 and 100,000 files, peak RSS of each (`/usr/bin/time -v`);
- with --compare REF: the same root-confined batch (`--root`) run by this tree and by the
  commit REF (`git archive`), alternately, `--repeat` times each: the cost of a change.
Whole commands are timed, start-up included; the local Prefect server opsflow reuses is
started beforehand, as it would be on a machine where opsflow was used once.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPSFLOW = [sys.executable, "-m", "flows.batch"]


def make_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        sub = folder / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir()
        (sub / f"f{i:06d}.txt").write_text(f"line {i}\n" * 20)


def timed(argv: list[str] | str, env: dict[str, str], shell: bool = False) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, shell=shell, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {argv}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stderr


def peak_rss_mb(stderr: str) -> float:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(match.group(1)) / 1024 if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--large", action="store_true", help="also 10,000 and 100,000 files (slow)")
    parser.add_argument("--compare", metavar="REF", help="only compare this tree with commit REF")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tree with --compare")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.files, args.repeat)
        return
    with tempfile.TemporaryDirectory(prefix="opsflow-files-bench-") as tmp:
        base = Path(tmp)
        env = dict(os.environ, OPSFLOW_HOME=str(base / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        env.pop("OPSFLOW_DATABASE_URL", None)
        inputs = base / "in"
        make_files(inputs, args.files)
        warm = base / "warm"
        make_files(warm, 1)
        timed(
            [*OPSFLOW, "files", "run", str(warm), "-p", "cp {input} {output}", "-o", str(base / "w"), "-q"],
            env,
        )

        run = [*OPSFLOW, "files", "run", str(inputs), "-p", "cp {input} {output}", "--workers", "2", "-q"]
        first, _ = timed([*run, "-o", str(base / "out1")], env)
        rerun, _ = timed([*run, "-o", str(base / "out1")], env)
        per_task, _ = timed([*run, "-o", str(base / "out2"), "--chunk-size", "1"], env)
        (base / "out3").mkdir()
        xargs, _ = timed(
            f"find {inputs} -type f -print0 | xargs -0 -P2 -I{{}} cp {{}} {base / 'out3'}/", env, shell=True
        )
        rows = [
            (f"{args.files} files, cp, 2 workers", "xargs -P2 cp", first, xargs, "≤ 1.5×"),
            ("same, one Prefect task per file", "opsflow (chunked)", per_task, first, "≥ 5× slower"),
            ("re-run of the unchanged batch", "first run", rerun, first, "≤ 0.3×"),
        ]
        print(f"{'benchmark':<36} {'baseline':<20} {'measured':>9} {'baseline':>9} {'ratio':>7}  goal")
        for name, baseline, ours, theirs, goal in rows:
            print(f"{name:<36} {baseline:<20} {ours:>8.2f}s {theirs:>8.2f}s {ours / theirs:>6.2f}×  {goal}")
        if args.large:
            rss = {}
            for count in (10_000, 100_000):
                folder = base / f"in{count}"
                make_files(folder, count)
                started = time.perf_counter()
                command = [*OPSFLOW, "files", "run", str(folder), "-p", "cp {input} {output}", "-q"]
                _, err = timed(["/usr/bin/time", "-v", *command, "-o", str(base / f"out{count}")], env)
                rss[count] = (peak_rss_mb(err), time.perf_counter() - started)
            print(f"{'files':>8} {'peak RSS':>10} {'time':>8}")
            for count, (mb, seconds) in rss.items():
                print(f"{count:>8} {mb:>8.0f}MB {seconds:>7.1f}s")
            print(f"100k/10k RSS ratio: {rss[100_000][0] / rss[10_000][0]:.2f}× (goal ≤ 1.3×, and ≤ 200 MB)")


def compare(ref: str, count: int, repeat: int) -> None:
    """`files run --root IN IN -p 'cp {input} {output}'` by this tree and by `ref`, alternately."""
    with tempfile.TemporaryDirectory(prefix="opsflow-files-compare-") as tmp:
        base = Path(tmp)
        other = base / "ref"
        other.mkdir()
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(other)], input=archive, check=True)
        env = dict(os.environ, OPSFLOW_HOME=str(base / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        env.pop("OPSFLOW_DATABASE_URL", None)
        inputs = base / "in"
        make_files(inputs, count)
        trees = {"this tree": ROOT, ref: other}
        times: dict[str, list[float]] = {name: [] for name in trees}
        for run in range(repeat + 1):  # the first round warms the server and the page cache
            for name, tree in trees.items():
                command = [*OPSFLOW, "files", "run", "--root", str(inputs), str(inputs)]
                command += ["-p", "cp {input} {output}", "--workers", "2", "-q"]
                command += ["-o", str(base / f"out-{run}-{len(times[name])}-{tree.name}")]
                started = time.perf_counter()
                done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"failed ({done.returncode}) in {tree}:\n{done.stderr[-3000:]}")
                if run:
                    times[name].append(time.perf_counter() - started)
        print(f"{count} files, cp, 2 workers, --root; median of {repeat} runs each")
        for name, seconds in times.items():
            print(
                f"{name:<20} {statistics.median(seconds):>7.2f}s  ({', '.join(f'{s:.2f}' for s in seconds)})"
            )
        ours, theirs = (statistics.median(times[n]) for n in trees)
        print(f"ratio: {ours / theirs:.2f}×")


if __name__ == "__main__":
    main()
