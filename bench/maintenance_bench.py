"""Maintenance procedures against their plain equivalents, side by side, printed as a table.

    .venv/bin/python bench/maintenance_bench.py [--migrations 50] [--admin-url postgresql://...]

- `db migrate` of N small migrations vs a `psql -1 -f` loop over the same files, and vs
  seed 004's pattern (pg_dump, then psql of each file);
- `health check` vs the raw checks (psql SELECT 1, redis-cli PING, df) run one after another.
Whole commands are timed, start-up included, with the local Prefect server opsflow reuses
already running ("once the local server is warm"). Each side gets a fresh database.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
OPSFLOW = [sys.executable, "-m", "flows.batch"]


def timed(
    argv: list[str] | str, env: dict[str, str], shell: bool = False, ok: tuple[int, ...] = (0,)
) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, shell=shell, capture_output=True, text=True)
    if done.returncode not in ok:
        raise SystemExit(f"failed ({done.returncode}): {argv}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def best(runs: int, make: callable) -> float:
    return min(make() for _ in range(runs))


def write_migrations(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for n in range(1, count + 1):
        (folder / f"{n:03d}_table_{n}.sql").write_text(
            f"CREATE TABLE app.t_{n} (id int PRIMARY KEY, v text);\n"
            f"INSERT INTO app.t_{n} SELECT g, 'value ' || g FROM generate_series(1, 100) g;\n"
            f"CREATE INDEX t_{n}_v_idx ON app.t_{n} (v);\n"
        )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_health(database_url: str, env: dict[str, str], runs: int) -> float:
    """Best time of an uncached GET /health from a running `health serve` (the warm path a
    monitoring system scrapes)."""
    import signal
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [
            *OPSFLOW,
            "health",
            "serve",
            "--port",
            str(port),
            "--cache-seconds",
            "0",
            "--database-url",
            database_url,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/health"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=10).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("health serve did not start") from None
                time.sleep(0.2)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            urllib.request.urlopen(url, timeout=10).read()
            times.append(time.perf_counter() - started)
        return min(times)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--migrations", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3, help="best of N for each side")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("OPSFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("OPSFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    args = parser.parse_args()
    admin = args.admin_url.replace("postgresql+psycopg://", "postgresql://")
    server = admin.rsplit("/", 1)[0]
    created: list[str] = []

    def fresh_database() -> str:
        name = f"opsflow_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        with psycopg.connect(f"{server}/{name}", autocommit=True) as conn:
            conn.execute("CREATE SCHEMA app")
        return f"{server}/{name}"

    with tempfile.TemporaryDirectory(prefix="opsflow-maint-bench-") as tmp:
        base = Path(tmp)
        env = dict(
            os.environ,
            OPSFLOW_HOME=str(base / "home"),
            OPSFLOW_BACKUP_DIR=str(base / "backups"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            OPSFLOW_REDIS_URL=args.redis_url,
            OPSFLOW_HEALTH_REQUIRED='["postgres", "redis"]',
        )
        env.pop("OPSFLOW_DATABASE_URL", None)
        migrations = base / "migrations"
        write_migrations(migrations, args.migrations)
        try:
            # Warm-up: the local Prefect server is started (or found) once, outside the timings.
            timed(
                [*OPSFLOW, "db", "status", "--dir", str(migrations), "--database-url", fresh_database()], env
            )
            timed(
                [
                    *OPSFLOW,
                    "db",
                    "migrate",
                    "--dir",
                    str(migrations),
                    "--database-url",
                    fresh_database(),
                    "-q",
                ],
                env,
            )

            files = " ".join(str(p) for p in sorted(migrations.glob("*.sql")))

            def psql_loop() -> float:
                url = fresh_database()
                return timed(
                    f"for f in {files}; do psql -X -q -1 -v ON_ERROR_STOP=1 -d {url} -f $f || exit 1; done",
                    env,
                    shell=True,
                )

            def seed004() -> float:
                url = fresh_database()
                script = (
                    f"pg_dump -Fc -d {url} -f {base}/seed004.dump && "
                    f"for f in {files}; do psql -X -q -1 -v ON_ERROR_STOP=1 -d {url} -f $f || exit 1; done"
                )
                return timed(script, env, shell=True)

            def ours(*extra: str) -> float:
                url = fresh_database()
                return timed(
                    [
                        *OPSFLOW,
                        "db",
                        "migrate",
                        "--dir",
                        str(migrations),
                        "--database-url",
                        url,
                        "-q",
                        *extra,
                    ],
                    env,
                )

            plain = best(args.runs, psql_loop)
            pattern = best(args.runs, seed004)
            migrate = best(args.runs, ours)
            no_backup = best(args.runs, lambda: ours("--no-backup"))

            health_url = fresh_database()
            raw_health = (
                f"psql -X -q -d {health_url} -c 'SELECT 1' >/dev/null && "
                f"redis-cli -u {args.redis_url} PING >/dev/null && df -P / >/dev/null"
            )
            raw = best(args.runs, lambda: timed(raw_health, env, shell=True))
            health = best(
                args.runs,
                lambda: timed(
                    [*OPSFLOW, "health", "check", "--database-url", health_url, "-q"], env, ok=(0, 1)
                ),
            )
            served = serve_health(health_url, env, args.runs)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                for name in created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    n = args.migrations
    rows = [
        (f"db migrate, {n} migrations", "psql -1 -f loop", migrate, plain),
        (f"db migrate, {n} migrations", "seed 004 (pg_dump+psql)", migrate, pattern),
        (f"db migrate --no-backup, {n}", "psql -1 -f loop", no_backup, plain),
        ("health check (pg, redis, disk)", "psql + redis-cli + df", health, raw),
        ("health serve GET /health, warm", "psql + redis-cli + df", served, raw),
    ]
    print(f"best of {args.runs}; whole commands; local Prefect server warm")
    print(f"{'benchmark':<32} {'baseline':<24} {'measured':>9} {'baseline':>9} {'ratio':>7}  goal")
    for name, baseline, measured, theirs in rows:
        print(f"{name:<32} {baseline:<24} {measured:>8.2f}s {theirs:>8.2f}s {measured / theirs:>6.2f}×  < 2×")


if __name__ == "__main__":
    main()
