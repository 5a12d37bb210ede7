"""Resources: reservations in the dispatcher, the memory rlimit on a step, validation, real runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.workflow.dispatch import Dispatcher, Outcome, Reservation, reservation_of
from flows.workflow.graph import build_graph
from flows.workflow.load import parse_workflow
from flows.workflow.shell import run_command
from flows.workflow.tasks import memory_note

MI = 2**20


def _graph(text: str):
    return build_graph(parse_workflow(text, Path("t.yaml")))


def _parallel(*steps: tuple[str, str | None, str | None], group: str = "") -> str:
    """A workflow with one parallel group of leaves (name, memory, cpu)."""
    lines = ["name: w", "steps:", "  - name: g", "    parallel: true", *group.splitlines(), "    steps:"]
    for name, memory, cpu in steps:
        lines += [f"      - name: {name}", "        command: 'true'"]
        wanted = {k: v for k, v in (("memory", memory), ("cpu", cpu)) if v is not None}
        if wanted:
            lines.append("        resources: {" + ", ".join(f"{k}: '{v}'" for k, v in wanted.items()) + "}")
    return "\n".join(lines) + "\n"


def test_reservation_is_the_steps_own_else_its_groups_per_field():
    graph = _graph(
        _parallel(
            ("own", "512Mi", "1"),
            ("half", "256Mi", None),
            ("inherits", None, None),
            group="    resource_requirements: {memory: 1Gi, cpu: '2'}",
        )
    )
    assert reservation_of(graph, "own") == Reservation(512 * MI, 1.0)
    assert reservation_of(graph, "half") == Reservation(256 * MI, 2.0)
    assert reservation_of(graph, "inherits") == Reservation(1024 * MI, 2.0)


def test_steps_that_fit_start_together_and_the_rest_wait():
    graph = _graph(_parallel(("a", "600Mi", None), ("b", "600Mi", None), ("c", "300Mi", None)))
    dispatcher = Dispatcher(graph, memory_limit=1024 * MI)
    assert dispatcher.ready() == ["a", "c"]  # b does not fit beside a; c does (and passes b)
    assert dispatcher.ready() == []
    dispatcher.finish("c", Outcome.COMPLETED)
    assert dispatcher.ready() == []  # a's 600Mi still held
    dispatcher.finish("a", Outcome.COMPLETED)
    assert dispatcher.ready() == ["b"]


def test_a_step_held_back_for_room_is_told_once_with_what_it_needs_and_who_holds_it():
    graph = _graph(_parallel(("a", "600Mi", "1"), ("b", "600Mi", "0.5"), ("c", "300Mi", None)))
    dispatcher = Dispatcher(graph, limit=3, memory_limit=1024 * MI, cpu_limit=1.25)
    assert dispatcher.ready() == ["a", "c"]
    assert dispatcher.take_waits() == [
        "`b` waits for room: needs 600Mi memory; 600Mi of 1Gi reserved by `a`; "
        "needs 0.5 cpu; 1 of 1.25 reserved by `a`"
    ]
    assert dispatcher.ready() == [] and dispatcher.take_waits() == []  # once per step
    dispatcher.finish("a", Outcome.COMPLETED)
    assert dispatcher.ready() == ["b"] and dispatcher.take_waits() == []


def test_a_step_held_back_by_max_parallel_is_not_said_to_wait_for_room():
    graph = _graph(_parallel(("a", "100Mi", None), ("b", "100Mi", None)))
    dispatcher = Dispatcher(graph, limit=1, memory_limit=1024 * MI)
    assert dispatcher.ready() == ["a"] and dispatcher.take_waits() == []


def test_cpu_limit_counts_cores():
    graph = _graph(_parallel(("a", None, "0.5"), ("b", None, "500m"), ("c", None, "0.1")))
    dispatcher = Dispatcher(graph, cpu_limit=1.0)
    assert dispatcher.ready() == ["a", "b"]
    dispatcher.finish("a", Outcome.COMPLETED)
    assert dispatcher.ready() == ["c"]


def test_steps_without_a_reservation_are_not_held_back():
    graph = _graph(_parallel(("big", "1Gi", "4"), ("free", None, None)))
    assert Dispatcher(graph, memory_limit=1024 * MI, cpu_limit=4).ready() == ["big", "free"]


def test_no_deadlock_a_step_larger_than_the_limit_runs_alone():
    graph = _graph(_parallel(("huge", "4Gi", None), ("small", "100Mi", None)))
    dispatcher = Dispatcher(graph, memory_limit=1024 * MI)
    assert dispatcher.ready() == ["huge"]  # nothing running: it starts
    assert dispatcher.ready() == []  # and nothing fits beside it
    dispatcher.finish("huge", Outcome.COMPLETED)
    assert dispatcher.ready() == ["small"]


def test_max_parallel_still_caps_steps_that_fit():
    graph = _graph(_parallel(*((f"s{i}", "100Mi", None) for i in range(4))))
    dispatcher = Dispatcher(graph, limit=2, memory_limit=1024 * MI)
    assert dispatcher.ready() == ["s0", "s1"]
    assert dispatcher.ready() == []


def test_validate_refuses_a_step_larger_than_the_whole_limit(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(
        "name: big\nresource_limits:\n  memory_limit: 1Gi\n  cpu_limit: '2'\nsteps:\n"
        "  - name: g\n    resource_requirements:\n      cpu: '1'\n    steps:\n"
        "      - name: hog\n        command: 'true'\n        resources:\n          memory: 2Gi\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch", "validate", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 3, done.stderr
    assert f"{path}:13: step `hog` asks for memory 2Gi in `resources`" in done.stderr
    assert "`resource_limits.memory_limit` allows 1Gi" in done.stderr


def test_memory_limit_is_an_rlimit_and_its_failure_says_so():
    hog = [sys.executable, "-S", "-c", "b = bytearray(300 * 1024 * 1024)"]
    result = run_command(hog, memory_limit=128 * MI)
    assert result.exit_code == 1 and result.allocation_failed == "MemoryError"
    assert memory_note(result).startswith("it ran out of its memory reservation (128Mi")
    assert run_command(hog, memory_limit=512 * MI).ok  # room enough: no failure, no note
    fine = run_command("echo ok", memory_limit=64 * MI)
    assert fine.ok and fine.stdout == "ok\n" and memory_note(fine) == ""


# -- real runs ---------------------------------------------------------------------------


def _stamped(tmp_path: Path, memory_limit: str) -> str:
    steps = "\n".join(
        f"      - name: s{i}\n        resources: {{memory: 600Mi}}\n"
        f"        command: echo {i} $(date +%s.%N) >> {tmp_path}/start; sleep 0.6; "
        f"echo {i} $(date +%s.%N) >> {tmp_path}/end"
        for i in range(2)
    )
    return (
        f"name: mem\nresource_limits:\n  memory_limit: {memory_limit}\n"
        f"steps:\n  - name: g\n    parallel: true\n    steps:\n{steps}\n"
    )


def _spans(tmp_path: Path) -> list[tuple[float, float]]:
    def read(name: str) -> dict[str, float]:
        return dict(line.split() for line in (tmp_path / name).read_text().splitlines())  # type: ignore[misc]

    start, end = read("start"), read("end")
    return sorted((float(start[k]), float(end[k])) for k in start)


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(("limit", "overlap"), [("1Gi", False), ("2Gi", True)])
def test_steps_whose_memory_does_not_fit_together_run_one_after_the_other(
    write_workflow, tmp_path, limit, overlap
):
    from flows.workflow.run import run_workflow

    state = run_workflow(path=str(write_workflow(_stamped(tmp_path, limit))), return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    (first_start, first_end), (second_start, _) = _spans(tmp_path)
    assert (second_start < first_end) is overlap


@pytest.mark.usefixtures("prefect_api")
def test_a_step_beyond_its_memory_fails_with_that_reason(write_workflow):
    from flows.workflow.run import run_workflow

    path = write_workflow(
        "name: hog\nsteps:\n  - name: hog\n    resources:\n      memory: 128Mi\n"
        '    command: python3 -c "b = bytearray(300*1024*1024)"\n'
    )
    state = run_workflow(path=str(path), return_state=True)
    summary = state.result(raise_on_failure=False)
    assert state.is_failed()
    (step,) = [s for s in summary["steps"] if s["step"] == "hog"]
    assert step["state"] == "Failed"
    assert "exited with code 1: it ran out of its memory reservation (128Mi" in step["reason"]
    assert "MemoryError" in step["reason"]


def test_a_groups_requirement_above_the_limit_is_refused_where_it_is_written():
    from flows.errors import ValidationError
    from flows.workflow.check import analyse

    text = _parallel(("a", None, None), group="    resource_requirements:\n      cpu: '8'")
    loaded = parse_workflow("resource_limits: {cpu_limit: '4'}\n" + text, Path("t.yaml"))
    with pytest.raises(ValidationError) as info:
        analyse(loaded)
    assert info.value.where == "t.yaml:7"  # the `cpu:` line under `resource_requirements`
    assert "asks for cpu 8 in `resource_requirements`" in str(info.value)
    assert "`resource_limits.cpu_limit` allows 4" in str(info.value)
