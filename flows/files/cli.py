"""`python -m flows.batch files ...`: batch file processing from the command line."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_options import Json, Quiet, Verbose
from flows.console import Console
from flows.durations import MAX_DURATION_SECONDS
from flows.errors import EXIT_CONFIG, EXIT_CONNECTION, EXIT_DRY_RUN, EXIT_OK, OpsflowError, ValidationError
from flows.limits import MAX_PARALLEL, MAX_RETRIES

files_app = typer.Typer(
    help="Batch file processing: run, dead-letter queue, history, reports.", no_args_is_help=True
)
dlq_app = typer.Typer(help="The dead-letter queue: files that failed every processor.", no_args_is_help=True)
files_app.add_typer(dlq_app, name="dlq")


def split_fallbacks(values: list[str] | None) -> list[str]:
    """`--fallback a,b` or repeated `--fallback`; a value that does not split into valid
    processors (a command containing commas) is one processor."""
    from flows.files.processors import parse_processor

    result: list[str] = []
    for value in values or []:
        parts = [p.strip() for p in value.split(",")]
        try:
            if len(parts) > 1:
                for part in parts:
                    parse_processor(part)
                result.extend(parts)
                continue
        except ValidationError:
            pass
        result.append(value)
    return result


@files_app.command("run")
def run(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="Directories, files or globs.", show_default=False)],
    processor: Annotated[
        str | None,
        typer.Option(
            "--processor",
            "-p",
            help="Command with {input}/{output}/{name}, module:function, or records:SCHEMA.json.",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Directory for outputs (mirrors the input tree).")
    ] = None,
    mode: Annotated[str, typer.Option(help="sequential, parallel or queue.")] = "parallel",
    workers: Annotated[int, typer.Option(help="Files processed at once.", min=1, max=MAX_PARALLEL)] = 2,
    retries: Annotated[
        int, typer.Option(help="Retries per file before the fallbacks.", min=0, max=MAX_RETRIES)
    ] = 2,
    retry_delay: Annotated[
        float,
        typer.Option(
            help="First retry delay in seconds (doubles, ±25% jitter).", min=0, max=MAX_DURATION_SECONDS
        ),
    ] = 1.0,
    fallback: Annotated[
        list[str] | None, typer.Option(help="Processors tried in order after the retries: P2,P3 or repeated.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Process files even when unchanged since a successful run.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be processed or skipped; exit 10.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds one attempt at one file may take.", min=0, max=MAX_DURATION_SECONDS),
    ] = 300.0,
    chunk_size: Annotated[
        int | None, typer.Option(help="Files per task (default: chosen from the batch size).", min=1)
    ] = None,
    notify: Annotated[
        str | None,
        typer.Option(
            help="Told the result at the end: an apprise URL (json://host:8080/hook), a channel name "
            "(OPSFLOW_NOTIFY_<NAME>) or a reference to a URL (env:NAME, block:NAME)."
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="A label for the job in history, metrics and the UI.")] = "files",
    deployment: Annotated[
        str, typer.Option(help="--mode queue: the chunk deployment workers drain (flow/deployment).")
    ] = "files-chunk/files-chunk",
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="Stop at the first failing file (no retries, no fallbacks).")
    ] = False,
    root: Annotated[
        list[Path] | None,
        typer.Option("--root", help="Allowed input roots: inputs elsewhere exit 5 (repeatable)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML of defaults and per-environment settings for these options.")
    ] = None,
    env: Annotated[
        str | None, typer.Option("--env", "-e", help="Environment section of --config to apply.")
    ] = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Process files with retries, fallbacks and a dead-letter queue; unchanged files are skipped."""
    console = Console("files", verbose=verbose, quiet=quiet)
    try:
        from flows.files.processors import parse_processor
        from flows.secrets import scrub_text

        if config is not None:
            # Options given on the command line win; the file fills in the rest.
            from flows.files.config import load_batch_config

            given = {
                n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"
            }
            for key, value in load_batch_config(config, env).items():
                if key not in given:
                    ctx.params[key] = value
            processor, mode, workers, retries = (
                ctx.params[k] for k in ("processor", "mode", "workers", "retries")
            )
            retry_delay, fallback, timeout, chunk_size = (
                ctx.params[k] for k in ("retry_delay", "fallback", "timeout", "chunk_size")
            )
            notify, name, deployment = ctx.params["notify"], ctx.params["name"], ctx.params["deployment"]
            output = Path(ctx.params["output"]) if ctx.params["output"] is not None else None
        elif env is not None:
            raise ValidationError("--env selects a section of --config; give --config too")
        if not processor:
            raise ValidationError("give --processor (or a --config that sets `processor`)")
        fallbacks = split_fallbacks(fallback)
        for spec in [processor, *fallbacks]:
            parse_processor(spec)
        if mode not in ("sequential", "parallel", "queue"):
            raise ValidationError(f"--mode must be sequential, parallel or queue, not {mode!r}")
        if (
            output is not None
            and "{output}" not in processor
            and not processor.startswith("records:")
            and ":" not in processor.split()[0]
        ):
            console.warning("--output is given but the processor template does not use {output}")
        for what, spec in [("--processor", processor)] + [("--fallback", f) for f in fallbacks]:
            if scrub_text(spec) != spec:
                raise ValidationError(
                    f"{what} has a password inside a URL, which the flow run's parameters would keep: "
                    "let the command read it from an environment variable"
                )
        if dry_run:
            return _dry_run(console, inputs, processor, fallbacks, output, force, json_output, root)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    from flows.batch import _configure_prefect_logging
    from flows.local_server import ensure_api
    from flows.settings import get_settings

    settings = get_settings()
    try:
        url = ensure_api(settings.server, settings.server_port, console.info)
        if mode == "queue" and url is None:
            raise ValidationError(
                "--mode queue needs a Prefect server its workers share: set PREFECT_API_URL"
            )
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    _configure_prefect_logging(verbose=verbose, quiet=quiet)
    from pydantic import SecretStr

    from flows.files.flow import process_files
    from flows.terminal_runs import terminal_run

    with _progress(console), terminal_run():
        state = process_files(
            inputs=[str(Path(i).resolve()) if not any(c in i for c in "*?[") else i for i in inputs],
            processor=processor,
            output=str(output.resolve()) if output else None,
            mode=mode,
            workers=workers,
            retries=retries,
            retry_delay=retry_delay,
            fallback=fallbacks,
            force=force,
            timeout=timeout or None,
            chunk_size=chunk_size,
            notify=SecretStr(notify) if notify and "://" in notify else notify,  # stored obscured
            name=name,
            fail_fast=fail_fast,
            deployment=deployment,
            roots=[str(r.resolve()) for r in root] if root else None,
            return_state=True,
        )
    value = state.result(raise_on_failure=False)
    if isinstance(value, OpsflowError):  # its one line is in the run's log already
        if json_output:
            console.json({"status": "error", "error": str(value), "exit_code": value.exit_code})
        return value.exit_code
    if not isinstance(value, dict):
        console.error(f"the flow run ended {state.name}: {state.message or value}")
        return 1
    _print_summary(console, value, json_output)
    if value.get("status") == "interrupted":
        return EXIT_CONNECTION
    return 1 if value["dead_lettered"] or value.get("failed") else EXIT_OK


def _print_summary(console: Console, summary: dict[str, Any], json_output: bool) -> None:
    if json_output:
        console.json(summary)
        return
    if summary.get("status") == "interrupted":
        console.out(
            f"job {summary['job_id'][:12]}: interrupted — {summary['processed']} of {summary['total']} files "
            "committed before its records database failed; run the batch again to finish it"
        )
        return
    console.out(
        f"job {summary['job_id'][:12]}: {summary['total']} files — {summary['processed']} processed, "
        f"{summary['skipped']} unchanged, {summary['retried']} retried, {summary['fallback']} by fallback, "
        f"{summary['dead_lettered']} dead-lettered in {summary['duration']:.1f}s"
    )
    if summary.get("failed"):
        console.out(
            f"stopped by --fail-fast: {summary['failed']} failed, {summary['not_started']} not started"
        )
    console.out(f"summary and metrics (JSON, Prometheus): {summary['reports']}")


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[None]:
    """On a terminal: a progress bar of files settled, with rate and time left."""
    import sys

    if console.quiet or not sys.stderr.isatty():
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from flows.files import report

    bar = Progress(
        TextColumn("files"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        transient=True,
    )
    task = bar.add_task("files", total=None, rate="")
    started = time.monotonic()

    def advance(kind: str, count: int) -> None:
        if kind == "total":
            bar.update(task, total=count)
            return
        done = bar.tasks[0].completed + count
        bar.update(task, advance=count, rate=f"{done / max(time.monotonic() - started, 1e-6):.0f}/s")

    report.listeners.append(advance)
    try:
        with bar:
            yield
    finally:
        report.listeners.remove(advance)


def _dry_run(
    console: Console,
    inputs: list[str],
    processor: str,
    fallbacks: list[str],
    output: Path | None,
    force: bool,
    json_output: bool,
    roots: list[Path] | None,
) -> int:
    from flows.files.chunks import options_key
    from flows.files.discover import iter_inputs
    from flows.files.processors import parse_processor
    from flows.files.work import fingerprint, output_exists, output_path
    from flows.records import files as store
    from flows.records.db import session

    proc = parse_processor(processor)
    options = options_key(processor, fallbacks, str(output) if output else None)
    files = iter_inputs(
        inputs,
        allowed_roots=[str(r) for r in roots] if roots else None,
        exclude=[str(output)] if output else [],
    )
    found = [(item, fingerprint(item.path, proc.identity, options)) for item in files]
    with session() as db:  # one lookup for the whole batch, as the chunks do per chunk
        done = set() if force else store.completed_fingerprints(db, [print_ for _, print_ in found])
    plan: list[dict[str, str]] = []
    for item, print_ in found:
        target = output_path(item, proc, output)
        unchanged = print_ in done and (target is None or output_exists(target))
        plan.append(
            {
                "input": str(item.path),
                "action": "skip (unchanged)" if unchanged else "process",
                "output": str(target or ""),
            }
        )
    if not plan:
        console.error(f"no input files in {', '.join(inputs)}")
        return EXIT_CONFIG
    if json_output:
        console.json(plan)
    else:
        for entry in plan:
            console.out(
                f"{entry['action']:<17} {entry['input']}"
                + (f" -> {entry['output']}" if entry["output"] else "")
            )
        todo = sum(1 for e in plan if e["action"] == "process")
        console.out(f"{todo} to process, {len(plan) - todo} unchanged (dry run: nothing was processed)")
    return EXIT_DRY_RUN


@files_app.command("serve")
def serve(
    root: Annotated[list[Path], typer.Option("--root", help="Directory events may name (repeatable).")],
    processor: Annotated[str, typer.Option("--processor", "-p", help="Processor for every event's files.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Directory for outputs.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8787,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="Host name, address or network url_submitted may download from, with :PORT for a "
            "port other than 80 and 443 (repeatable). Loopback, private and link-local addresses "
            "only when listed as addresses or networks.",
        ),
    ] = None,
    callback_host: Annotated[
        list[str] | None,
        typer.Option(
            "--callback-host",
            help="Host name, address or network (10.0.0.0/8) a callback_url may name (repeatable; "
            "also OPSFLOW_WEBHOOK_CALLBACK_HOSTS). Loopback, private and link-local addresses only "
            "when listed as addresses or networks.",
        ),
    ] = None,
    deployment: Annotated[
        str | None, typer.Option(help="Run batches as runs of this deployment (flow/deployment).")
    ] = None,
    secret_env: Annotated[
        list[str] | None,
        typer.Option(
            help="Environment variable holding the shared HMAC secret; repeat it to accept an old "
            "secret too while senders rotate (the first is the current one; default OPSFLOW_WEBHOOK_SECRET).",
            show_default=False,
        ),
    ] = None,
    signature_tolerance: Annotated[
        float,
        typer.Option(
            help="Seconds a signature's timestamp may differ from this clock.",
            min=1,
            max=MAX_DURATION_SECONDS,
        ),
    ] = 300.0,
    max_body: Annotated[int, typer.Option(help="Largest request body in bytes (413 beyond).", min=1)] = 1024
    * 1024,
    body_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds the whole body may take to arrive (408 beyond).", min=0.1, max=MAX_DURATION_SECONDS
        ),
    ] = 30.0,
    header_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a connection may take to send a request's head (408, closed).",
            min=0.1,
            max=MAX_DURATION_SECONDS,
        ),
    ] = 10.0,
    max_header_size: Annotated[
        int, typer.Option(help="Largest request head in bytes (400/431 beyond).", min=1024)
    ] = 16 * 1024,
    max_connections: Annotated[
        int, typer.Option(help="Open connections at once; requests beyond get 503.", min=1)
    ] = 100,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Accept signed webhook events (file_uploaded, batch_request, url_submitted) and run batches."""
    import os

    from flows.files.processors import parse_processor

    console = Console("webhook", verbose=verbose, quiet=quiet)
    secret_names = secret_env or ["OPSFLOW_WEBHOOK_SECRET"]
    secrets = [os.environ.get(name, "") for name in secret_names]
    try:
        for name, secret in zip(secret_names, secrets, strict=True):
            if len(secret) < 16:
                raise ValidationError(f"{name} must hold the shared secret (16 characters or more)")
        if any(not r.is_dir() for r in root):
            raise ValidationError(f"--root must be existing directories: {', '.join(str(r) for r in root)}")
        parse_processor(processor)
        from flows.local_server import ensure_api
        from flows.settings import get_settings

        settings = get_settings()
        from flows.files.webhook_callback import CallbackHosts

        callback_hosts = CallbackHosts.parse([*(callback_host or []), *settings.webhook_callback_hosts])
        CallbackHosts.parse(allow_host or [])  # a malformed entry (`host:port`) fails here, not per event
        ensure_api(settings.server, settings.server_port, console.info)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    from flows.files.webhook import IntakeConfig, make_server
    from flows.files.webhook_http import HttpLimits

    config = IntakeConfig(
        secret=secrets[0].encode(),
        previous_secrets=tuple(s.encode() for s in secrets[1:]),
        roots=tuple(r.resolve() for r in root),
        processor=processor,
        output=str(output.resolve()) if output else None,
        allow_hosts=frozenset(allow_host or []),
        callback_hosts=frozenset(callback_hosts.entries()),
        deployment=deployment,
        tolerance=signature_tolerance,
        limits=HttpLimits(
            max_body=max_body,
            body_timeout=body_timeout,
            header_timeout=header_timeout,
            max_header_size=max_header_size,
            max_connections=max_connections,
        ),
    )
    try:
        server = make_server(config, host, port)
    except OSError as exc:
        console.error(f"cannot listen on {host}:{port}: {exc.strerror}")
        return 4
    console.info(f"accepting signed events on http://{host}:{server.server_port}/webhook")
    if not callback_hosts.entries():
        console.info("no --callback-host: events that name a callback_url are refused")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.info("stopped")
    finally:
        server.server_close()
    return EXIT_OK


# The records commands register themselves on files_app / dlq_app.
from flows.files import cli_records  # noqa: E402, F401
