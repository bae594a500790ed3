"""`check -` and `fix -`: an editor's buffer read from standard input, checked as the file
`--stdin-filename` names (its settings, its name in findings); nothing is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOURCE = (
    "import torch\ntotal = 0\nfor i in range(3):\n"
    "    loss = torch.ones(1, requires_grad=True).sum()\n    loss.backward()\n    total += loss\n"
)


def _run(cwd: Path, *arguments: str, source: str = SOURCE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ema_lint", *arguments],
        cwd=cwd,
        input=source.encode(),
        capture_output=True,
        timeout=120,
    )


def test_check_reads_standard_input_under_the_given_name_and_its_settings(tmp_path: Path) -> None:
    (tmp_path / "quiet").mkdir()
    (tmp_path / "quiet" / "pyproject.toml").write_text('[tool.ema-lint]\nignore = ["EMA202"]\n')
    named = _run(tmp_path, "check", "--output-format", "concise", "-q", "--stdin-filename", "src/train.py", "-")
    assert named.returncode == 1
    assert named.stdout.decode().startswith("src/train.py:6:5: EMA202")
    unnamed = _run(tmp_path, "check", "--output-format", "concise", "-q", "-")
    assert unnamed.returncode == 1 and unnamed.stdout.decode().startswith("-:6:5: EMA202")
    governed = _run(tmp_path, "check", "-q", "--stdin-filename", "quiet/train.py")
    assert governed.returncode == 0 and governed.stdout == b""
    assert not (tmp_path / "src").exists()


def test_standard_input_cannot_be_mixed_with_paths(tmp_path: Path) -> None:
    (tmp_path / "other.py").write_text("x = 1\n")
    run = _run(tmp_path, "check", "-", "other.py")
    assert run.returncode == 2 and b"cannot be combined" in run.stderr


def test_fix_prints_the_fixed_source_or_a_diff_and_writes_nothing(tmp_path: Path) -> None:
    on_disk = tmp_path / "train.py"
    on_disk.write_text("unchanged\n")
    fixed = _run(tmp_path, "fix", "--write", "--stdin-filename", "train.py", "-")
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.decode() == SOURCE.replace("total += loss\n", "total += loss.detach()\n")
    diff = _run(tmp_path, "fix", "--stdin-filename", "train.py")
    assert diff.returncode == 1 and b"+    total += loss.detach()" in diff.stdout
    left = _run(tmp_path, "fix", "--write", "-", source=SOURCE.replace("import torch", "import torch\nimport (", 1))
    assert left.returncode == 1 and b"EMA001" in left.stderr
    assert on_disk.read_text() == "unchanged\n"


def test_standard_input_is_its_own_file_for_frames_and_for_fix(tmp_path: Path) -> None:
    """The buffer, not the file of that name on disk, shows in code frames; a read-only or
    linked file of that name does not stop the printed fix, since nothing is written."""
    (tmp_path / "train.py").write_text("print(1)\n" * 10)
    (tmp_path / "train.py").chmod(0o444)
    (tmp_path / "linked.py").symlink_to(tmp_path / "train.py")
    frame = _run(tmp_path, "check", "--show-source", "--stdin-filename", "train.py")
    assert b"total += loss" in frame.stdout and b"print(1)" not in frame.stdout
    for name in ("train.py", "linked.py"):
        fixed = _run(tmp_path, "fix", "--write", "--stdin-filename", name)
        assert fixed.stdout.decode().endswith("total += loss.detach()\n"), fixed.stderr
    assert (tmp_path / "train.py").read_text() == "print(1)\n" * 10
    mixed = _run(tmp_path, "check", "--stdin-filename", "train.py", "linked.py")
    assert mixed.returncode == 2 and b"cannot be combined" in mixed.stderr
