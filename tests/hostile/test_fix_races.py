"""`fix --write` never loses an edit made while it runs, and never writes outside the given paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ema_lint import fix_run
from ema_lint.fix_run import write_atomically

IO = Path(__file__).resolve().parent.parent.parent / "fixtures" / "_io"
ACCUMULATES = "import torch\n\ntotal = 0.0\nfor step in range(3):\n    loss = torch.ones(1, requires_grad=True).sum()\n    loss.backward()\n    total += loss\n"


def test_an_edit_saved_in_the_race_window_survives(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.py"
    path.write_bytes(b"what we read\n")

    def concurrent_edit(target: str) -> None:
        with open(target, "r+b") as handle:
            handle.write(b"their edit!!\n")

    monkeypatch.setattr(fix_run, "_between_check_and_replace", concurrent_edit)
    outcome = write_atomically(str(path), b"what we read\n", b"our fix\n")
    assert outcome is not None and outcome.startswith("changed on disk while being replaced")
    assert path.read_bytes() == b"their edit!!\n"
    assert os.listdir(tmp_path) == ["a.py"]


def test_an_edit_saved_before_the_check_is_never_overwritten(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.py"
    path.write_bytes(b"edited\n")
    assert write_atomically(str(path), b"what we read\n", b"our fix\n") == (
        "changed on disk since it was read; not overwritten"
    )
    assert path.read_bytes() == b"edited\n" and os.listdir(tmp_path) == ["a.py"]


def test_a_file_replaced_by_an_atomic_save_before_the_check_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_bytes(b"what we read\n")
    (tmp_path / "saved.tmp").write_bytes(b"what we read\n")
    os.replace(tmp_path / "saved.tmp", path)  # same bytes, another file: still ours to replace
    assert write_atomically(str(path), b"what we read\n", b"our fix\n") is None
    assert path.read_bytes() == b"our fix\n"


@pytest.mark.skipif(not hasattr(os, "setxattr"), reason="no extended attributes on this platform")
def test_extended_attributes_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_bytes(b"what we read\n")
    try:
        os.setxattr(path, "user.ema_lint_test", b"kept")
    except OSError:
        pytest.skip("this file system keeps no user extended attributes")
    assert write_atomically(str(path), b"what we read\n", b"our fix\n") is None
    assert os.getxattr(path, "user.ema_lint_test") == b"kept"


def _fix_cli(cwd: Path, *paths: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ema_lint", "fix", "--write", *paths], cwd=cwd, capture_output=True, text=True
    )


def test_fix_never_writes_through_a_linked_folder_out_of_the_tree(tmp_path: Path) -> None:
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    tree.mkdir()
    outside.mkdir()
    (tree / "pyproject.toml").write_text("[tool.ema-lint]\n")
    (outside / "victim.py").write_text(ACCUMULATES)
    (tree / "own.py").write_text(ACCUMULATES)
    (tree / "vendor").symlink_to(outside, target_is_directory=True)
    run = _fix_cli(tree, ".")
    assert (outside / "victim.py").read_text() == ACCUMULATES
    assert "loss.detach()" in (tree / "own.py").read_text(), run.stdout + run.stderr
    assert "outside the given paths" in run.stdout + run.stderr


def test_fix_writes_a_linked_folder_the_user_named(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.py").write_text(ACCUMULATES)
    (tmp_path / "vendor").symlink_to(outside, target_is_directory=True)
    _fix_cli(tmp_path, str(tmp_path / "vendor"))
    assert "loss.detach()" in (outside / "victim.py").read_text()


def test_a_rule_that_raises_costs_one_file_of_a_fix_run(tmp_path: Path, monkeypatch) -> None:
    from ema_lint import fixer
    from ema_lint.fix_run import fix_files
    from ema_lint.registry import rule_for
    from ema_lint.runner import SourceFile

    for name in ("a.py", "b.py", "c.py"):
        (tmp_path / name).write_text(ACCUMULATES)
    original = fixer.fix_source

    def explodes_on_b(path, *args, **kwargs):
        if path.endswith("b.py"):
            raise RecursionError("maximum recursion depth exceeded")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(fix_run, "fix_source", explodes_on_b)
    files = [SourceFile(str(tmp_path / n), str(tmp_path)) for n in ("a.py", "b.py", "c.py")]
    outcomes = fix_files(files, [rule_for("EMA202")], write=True)
    assert [o.written for o in outcomes] == [True, False, True]
    assert [d.code for d in outcomes[1].remaining] == ["EMA005"]
    assert "loss.detach()" in (tmp_path / "c.py").read_text()
