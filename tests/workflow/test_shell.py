"""Commands: exit codes, streamed lines, capture, timeouts that kill the whole process group."""

from __future__ import annotations

import os
import time

from flows.workflow.shell import run_command


def test_lines_exit_code_and_capture():
    lines = []
    result = run_command(
        "echo out; echo err >&2; printf 'no newline'",
        on_line=lambda stream, line: lines.append((stream, line)),
    )
    assert result.ok
    assert result.stdout == "out\nno newline"
    assert ("stdout", "out") in lines and ("stderr", "err") in lines and ("stdout", "no newline") in lines


def test_failure_in_the_middle_of_a_multiline_command_fails():
    result = run_command("false\necho after")
    assert result.exit_code == 1
    assert result.stdout == ""


def test_pipefail():
    assert run_command("false | cat").exit_code == 1


def test_timeout_kills_the_process_group(tmp_path):
    marker = tmp_path / "survivor"
    started = time.monotonic()
    # A grandchild in the background would outlive a plain kill of the shell.
    result = run_command(f"(sleep 3; touch {marker}) & sleep 30", timeout=0.5)
    assert result.timed_out and not result.ok
    assert time.monotonic() - started < 5
    time.sleep(3.5)
    assert not marker.exists()


def test_shebang_script_and_other_shells():
    result = run_command("#!/usr/bin/env python3\nimport sys\nprint(sys.version_info[0])\n")
    assert result.ok and result.stdout.strip() == "3"
    assert run_command("echo $0", shell="sh").stdout.strip() == "sh"


def test_missing_shell_is_127():
    lines = []
    result = run_command("echo", shell="/no/such/shell", on_line=lambda stream, line: lines.append(line))
    assert result.exit_code == 127 and "cannot start" in lines[0]


def test_environment_is_passed():
    result = run_command("echo $OPSFLOW_STEP", env={**os.environ, "OPSFLOW_STEP": "s1"})
    assert result.stdout.strip() == "s1"


def test_a_huge_line_costs_neither_time_nor_memory():
    lines = []
    started = time.monotonic()
    result = run_command(
        "head -c 33554432 /dev/zero | tr '\\0' a; echo; echo done", on_line=lambda s, l2: lines.append(l2)
    )
    assert result.ok and time.monotonic() - started < 5
    assert lines[-1] == "done" and lines[0].endswith("…[cut]") and len(lines[0]) < 5000


def test_a_background_child_does_not_hold_the_step():
    started = time.monotonic()
    result = run_command("sleep 5 & echo started", timeout=3)
    assert result.ok and not result.timed_out and result.stdout.strip() == "started"
    assert time.monotonic() - started < 2


def test_terminate_all_shares_one_grace_period():
    import threading

    from flows.workflow.shell import terminate_all

    threads = [threading.Thread(target=run_command, args=("trap '' TERM; sleep 30",)) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert terminate_all() == 3
    for t in threads:
        t.join(10)
    assert time.monotonic() - started < 5
