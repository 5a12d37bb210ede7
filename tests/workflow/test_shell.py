"""Commands: exit codes, streamed lines, capture, timeouts that kill the whole process group."""

from __future__ import annotations

import os
import signal

from flows.processes import group_alive
from flows.workflow.shell import MAX_LINE_CHARS, _LineBuffer, run_command
from tests.files.conftest_helpers import wait_for


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
    marker, finished = tmp_path / "survivor", tmp_path / "finished"
    groups: list[int] = []
    # A grandchild in the background would outlive a plain kill of the shell.
    result = run_command(
        f"(sleep 3; touch {marker}) & sleep 30; touch {finished}", timeout=0.5, on_start=groups.append
    )
    assert result.timed_out and not result.ok
    assert not finished.exists()  # stopped at its timeout, not waited for
    wait_for(lambda: not group_alive(groups[0], None), 60)  # the whole group: the grandchild too
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
    result = run_command(
        "head -c 33554432 /dev/zero | tr '\\0' a; echo; echo done", on_line=lambda s, l2: lines.append(l2)
    )
    assert result.ok
    assert lines[-1] == "done" and lines[0].endswith("…[cut]") and len(lines[0]) < 5000
    # What is kept of a line never grows past the cap, however much of it arrives: no
    # accumulation (memory), no re-scanning of what was kept (time).
    buffer = _LineBuffer("stdout", None)
    for _ in range(512):
        buffer.feed(b"a" * 65536)
        assert len(buffer.pending) <= MAX_LINE_CHARS * 4


def test_a_background_child_does_not_hold_the_step():
    result = run_command("sleep 600 & echo $!", timeout=120)
    assert result.ok and not result.timed_out
    child = int(result.stdout.strip())
    try:
        os.kill(child, 0)  # the step ended while its background child runs on
    finally:
        os.kill(child, signal.SIGKILL)


def test_terminate_all_shares_one_grace_period(tmp_path):
    """Every running command gets SIGTERM before any is killed: one grace period for all,
    not one after the other."""
    import threading

    from flows.workflow.shell import terminate_all

    log = tmp_path / "terms"
    started: list[int] = []
    seen_at_first_end: list[int] = []

    def one() -> None:
        run_command(
            f"trap 'echo term >> {log}' TERM; while :; do sleep 0.1 || true; done", on_start=started.append
        )
        if not seen_at_first_end:
            seen_at_first_end.append(len(log.read_text().splitlines()) if log.exists() else 0)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(started) == 3, 60)
    assert terminate_all() == 3
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert seen_at_first_end == [3]  # all three had their SIGTERM when the first was killed
