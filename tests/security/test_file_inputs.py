"""`files run --root` against inputs that change between discovery and processing.

Discovery checks that every file is inside the roots, but a file (or a folder above it) can be
replaced by a link to a file outside them afterwards. Each input is opened once, the opened file
is checked to be inside the roots, and the processor reads that very file (`/dev/fd/N`), so a
swap before or while it runs never hands it the file the link points to.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("prefect_api")

SECRET = "TOP SECRET\n"


@pytest.fixture
def tree(tmp_path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPSFLOW_DATABASE_URL", raising=False)
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "b.txt").write_text("b\n")
    (root / "sub" / "c.txt").write_text("c\n")
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "shadow").write_text(SECRET)
    (outside / "sub" / "c.txt").write_text(SECRET)
    return root, outside


def run_batch(root: Path, out: Path, swap_when: str, swap: str) -> dict:
    """A batch whose processor, on the file named `swap_when`, runs `swap` first, then copies."""
    from flows.files.flow import process_files
    from flows.records.db import dispose_engines

    processor = (
        f'sh -c \'if [ "$1" = {swap_when} ]; then {swap}; fi; cp "$2" "$3"\' _ {{name}} {{input}} {{output}}'
    )
    try:
        state = process_files(
            inputs=[str(root)],
            roots=[str(root)],
            processor=processor,
            output=str(out),
            mode="sequential",
            retries=0,
            return_state=True,
        )
        return state.result(raise_on_failure=False)
    finally:
        dispose_engines()


def copied(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*") if p.is_file()}


def test_a_file_swapped_for_a_link_after_discovery_is_never_read(tree, tmp_path):
    root, outside = tree
    out = tmp_path / "out"
    summary = run_batch(root, out, "a.txt", f"ln -sfn {outside / 'shadow'} {root / 'b.txt'}")
    assert SECRET not in copied(out).values(), copied(out)
    assert summary["dead_lettered"] == 1 and "b.txt" not in copied(out)


def test_a_folder_swapped_for_a_link_after_discovery_is_never_read(tree, tmp_path):
    root, outside = tree
    out = tmp_path / "out"
    swap = f"mv {root / 'sub'} {root / 'sub.old'} && ln -s {outside / 'sub'} {root / 'sub'}"
    summary = run_batch(root, out, "b.txt", swap)
    assert SECRET not in copied(out).values(), copied(out)
    assert summary["dead_lettered"] == 1


def test_a_file_swapped_while_its_processor_runs_is_read_as_opened(tree, tmp_path):
    root, outside = tree
    out = tmp_path / "out"
    summary = run_batch(root, out, "b.txt", f"ln -sfn {outside / 'shadow'} {root / 'b.txt'}")
    assert copied(out) == {"a.txt": "a\n", "b.txt": "b\n", "sub/c.txt": "c\n"}, summary


def test_the_processor_reads_the_opened_file_under_the_input_s_own_name(tree, tmp_path):
    """`{input}` names the opened file, yet ends in the input's name (extensions still tell)."""
    from flows.files.discover import InputFile
    from flows.files.processors import parse_processor
    from flows.files.work import attempt

    root, _ = tree
    out = tmp_path / "out"
    processor = parse_processor('sh -c \'basename "$1" > "$2"; cat "$1" >> "$2"\' _ {input} {output}')
    outcome = attempt(
        InputFile(root / "a.txt", root), processor, output_dir=out, timeout=60, print_="x", roots=[root]
    )
    assert outcome.status == "completed", outcome.error
    assert (out / "a.txt").read_text() == "a.txt\na\n"
