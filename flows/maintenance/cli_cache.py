"""`python -m flows.batch cache ...`: Redis upkeep from the command line.

Every option is checked before a flow run starts (a bad one exits 3 at once); then the flow
runs in this process like the `db` commands, and its outcome is printed (or `--json`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flows.cli_options import Json, Quiet, Verbose
from flows.console import Console
from flows.maintenance.cli import DryRun, Env, secret

cache_app = typer.Typer(
    help="Redis upkeep: memory and keys by prefix, delete by pattern (SCAN), fix keys without TTL.",
    no_args_is_help=True,
)

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="Redis URL, redis://[:PASSWORD@]HOST:PORT/DB (default: OPSFLOW_REDIS_URL or REDIS_URL).",
        show_default=False,
    ),
]
BatchSize = Annotated[
    int,
    typer.Option("--batch-size", min=1, max=10_000, help="Keys per SCAN COUNT and per UNLINK/EXPIRE batch."),
]


def _run(
    console: Console,
    flow: str,
    *,
    json_output: bool,
    verbose: bool,
    quiet: bool,
    render: Any = None,
    **params: Any,
) -> int:
    """Check the settings and options (exit 3 before any run starts), then run the flow."""
    from flows.errors import OpsflowError
    from flows.maintenance import cache_scan as scan
    from flows.maintenance.settings import load_settings
    from flows.maintenance.terminal import default_render, run_procedure

    try:
        settings = load_settings(params.get("environment"), redis_url=params.get("redis_url"))
        scan.redacted_url(settings.redis_url.get_secret_value())
        if "pattern" in params:
            scan.check_delete_pattern(params["pattern"], params["allow_all"])
        if "prefix" in params:
            scan.check_prefix(params["prefix"])
            scan.parse_ttl(params["ttl"])
        if "prefix_depth" in params:
            scan.check_grouping(params["prefix_depth"], params["delimiter"], params["top"])
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    return run_procedure(
        console,
        flow,
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        render=render or default_render,
        **params,
    )


def render_report(console: Console, outcome: dict[str, Any]) -> None:
    details = outcome.get("details") or {}
    memory = details.get("memory")
    if not memory:
        console.out(outcome.get("message", ""))
        return
    limit = memory["maxmemory_human"] if memory["maxmemory"] else "no limit"
    console.out(details["redis"])
    console.out(f"  keys     {memory['dbsize']}")
    console.out(
        f"  memory   {memory['used_memory_human']} used, peak {memory['used_memory_peak_human']}, "
        f"max {limit} ({memory['maxmemory_policy']}), fragmentation {memory['mem_fragmentation_ratio']}"
    )
    console.out(
        f"  scanned  {details['keys_scanned']} matching {details['match']!r} in "
        f"{details['prefix_count']} prefixes, {details['keys_without_ttl']} without TTL"
    )
    rows = details.get("prefixes") or []
    if not rows:
        return
    table = [["PREFIX", "KEYS", "NO TTL", "TYPES"]] + [
        [str(r["prefix"]), str(r["keys"]), str(r["no_ttl"]), r["types"]] for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    console.out()
    for line in table:
        cells = [line[0].ljust(widths[0]), line[1].rjust(widths[1]), line[2].rjust(widths[2]), line[3]]
        console.out("  ".join(cells).rstrip())


@cache_app.command("report")
def report(
    prefix_depth: Annotated[
        int, typer.Option("--prefix-depth", min=1, help="Delimiter-separated parts that make a prefix.")
    ] = 1,
    delimiter: Annotated[str, typer.Option("--delimiter", help="What separates the parts of a key.")] = ":",
    match: Annotated[str, typer.Option("--match", help="Only keys matching this SCAN pattern.")] = "*",
    top: Annotated[int, typer.Option("--top", min=1, help="Show the N prefixes with most keys.")] = 20,
    redis_url: RedisUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Memory (used, peak, max, fragmentation), key count, and keys by prefix with and without TTL."""
    console = Console("cache-report", verbose=verbose, quiet=quiet)
    return _run(
        console,
        "flows.maintenance.cache:cache_report",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        render=render_report,
        prefix_depth=prefix_depth,
        delimiter=delimiter,
        match=match,
        top=top,
        environment=env,
        redis_url=secret(redis_url),
    )


@cache_app.command("delete")
def delete(
    pattern: Annotated[str, typer.Argument(help="SCAN pattern of the keys to delete, e.g. 'session:*'.")],
    batch_size: BatchSize = 500,
    dry_run: DryRun = False,
    allow_all: Annotated[
        bool, typer.Option("--all", help="Allow a pattern that matches every key ('*' or empty).")
    ] = False,
    redis_url: RedisUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Delete the keys matching PATTERN: SCAN (never KEYS), UNLINK in batches; dry run counts only."""
    console = Console("cache-delete", verbose=verbose, quiet=quiet)
    return _run(
        console,
        "flows.maintenance.cache:cache_delete",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        pattern=pattern,
        batch_size=batch_size,
        dry_run=dry_run,
        allow_all=allow_all,
        environment=env,
        redis_url=secret(redis_url),
    )


@cache_app.command("fix-ttl")
def fix_ttl(
    prefix: Annotated[str, typer.Argument(help="Key prefix (literal, not a pattern), e.g. 'session:'.")],
    ttl: Annotated[
        str, typer.Option("--ttl", help="TTL to set: 3600, 90s, 15m, 1h, 7d.", show_default=False)
    ],
    batch_size: BatchSize = 500,
    dry_run: DryRun = False,
    redis_url: RedisUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Set a TTL on the keys under PREFIX that have none; keys with a TTL keep theirs."""
    console = Console("cache-fix-ttl", verbose=verbose, quiet=quiet)
    return _run(
        console,
        "flows.maintenance.cache:cache_fix_ttl",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        prefix=prefix,
        ttl=ttl,
        batch_size=batch_size,
        dry_run=dry_run,
        environment=env,
        redis_url=secret(redis_url),
    )
