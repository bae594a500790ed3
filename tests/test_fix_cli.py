"""`ema-lint fix` end to end: diff by default, --write, --unsafe-fixes, selection, noqa,
per-file ignores, the summary and the exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fix_rules import DataToDetach, DetachAccumulatedLoss, GrowingName, LibraryCheckpoint

from ema_lint import registry, workspace
from ema_lint.cli import main

TEST_RULES = (DetachAccumulatedLoss, DataToDetach, LibraryCheckpoint, GrowingName)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose enabled rules are the test-only ones (the real ones land separately)."""
    monkeypatch.setattr(registry, "_RULE_BY_CODE", {rule.code: rule for rule in TEST_RULES})
    monkeypatch.setattr(
        workspace, "enabled_rules", lambda select, ignore: registry.enabled_rules(select, ignore, TEST_RULES)
    )
    (tmp_path / "pyproject.toml").write_text('[tool.ema-lint]\nignore = ["EMA905"]\n')
    (tmp_path / "train.py").write_bytes(b"import os\n\nfor loss in losses:\n    total += loss\nema = p.data\n")
    (tmp_path / "clean.py").write_bytes(b"x = 1\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(*args: str):
    return CliRunner().invoke(main, ["fix", "-j", "1", *args])


TRAIN_DIFF = (
    "--- train.py\n"
    "+++ train.py\n"
    "@@ -1,5 +1,6 @@\n"
    " import os\n"
    "+import torch\n"
    " \n"
    " for loss in losses:\n"
    "-    total += loss\n"
    "+    total += loss.detach()\n"
    " ema = p.data\n"
)


def test_default_shows_a_diff_writes_nothing_and_exits_1(project: Path) -> None:
    before = (project / "train.py").read_bytes()
    result = _run()
    assert result.output == (
        TRAIN_DIFF
        + "train.py:5:7: EMA903 `p.data` bypasses autograd\n"
        "  help: Use `p.detach()` (unsafe fix)\n"
        "Would fix 1 finding (EMA902: 1) in 1 file; rerun with --write to apply.\n"
        "1 finding remains: 1 unsafe fix; rerun with --unsafe-fixes.\n"
    )
    assert result.exit_code == 1
    assert (project / "train.py").read_bytes() == before


def test_write_applies_safe_fixes_and_reports_what_remains(project: Path) -> None:
    result = _run("--write")
    assert result.exit_code == 1
    assert (project / "train.py").read_bytes() == (
        b"import os\nimport torch\n\nfor loss in losses:\n    total += loss.detach()\nema = p.data\n"
    )
    assert result.output.endswith("Fixed 1 finding (EMA902: 1) in 1 file.\n1 finding remains: 1 unsafe fix; rerun with --unsafe-fixes.\n")


def test_write_with_unsafe_fixes_leaves_nothing_and_exits_0(project: Path) -> None:
    result = _run("--write", "--unsafe-fixes")
    assert (result.exit_code, result.output) == (0, "Fixed 2 findings (EMA902: 1, EMA903: 1) in 1 file.\n")
    assert (project / "train.py").read_bytes() == (
        b"import os\nimport torch\nfrom ema_lint.runtime import ema_update\n\n"
        b"for loss in losses:\n    total += loss.detach()\nema = p.detach()\n"
    )
    second = _run("--write", "--unsafe-fixes")
    assert (second.exit_code, second.output) == (0, "No fixes to apply.\n")


def test_select_and_ignore_choose_the_fixes(project: Path) -> None:
    result = _run("--write", "--unsafe-fixes", "--select", "EMA903")
    assert result.output == "Fixed 1 finding (EMA903: 1) in 1 file.\n"
    assert b"total += loss\n" in (project / "train.py").read_bytes()
    result = _run("--write", "--ignore", "EMA903")
    assert (result.exit_code, result.output) == (0, "Fixed 1 finding (EMA902: 1) in 1 file.\n")


def test_noqa_and_per_file_ignores_protect_lines_and_files(project: Path) -> None:
    (project / "train.py").write_bytes(b"total += loss  # noqa: EMA902\n")
    (project / "generated.py").write_bytes(b"total += loss\n")
    (project / "pyproject.toml").write_text(
        '[tool.ema-lint]\nignore = ["EMA905"]\n[tool.ema-lint.per-file-ignores]\n"generated.py" = ["EMA902"]\n'
    )
    result = _run("--write")
    assert (result.exit_code, result.output) == (0, "No fixes to apply.\n")
    assert (project / "generated.py").read_bytes() == b"total += loss\n"


def test_display_only_fix_is_shown_as_help_only(project: Path) -> None:
    (project / "train.py").write_bytes(b"y = checkpoint_seq(blocks, x)\n")
    result = _run("--write", "--unsafe-fixes")
    assert result.exit_code == 1
    assert result.output == (
        "train.py:1:5: EMA904 `checkpoint_seq` recomputes running statistics\n"
        "  help: Call `convert_running_stats(model)` once\n"
        "No fixes to apply.\n"
        "1 finding remains: 1 a person must choose; see help.\n"
    )


def test_fix_that_does_not_converge_is_an_error_and_the_file_is_untouched(project: Path) -> None:
    (project / "train.py").write_bytes(b"grow = 1\n")
    (project / "pyproject.toml").write_text("[tool.ema-lint]\n")
    result = _run("--write", "--select", "EMA905")
    assert result.exit_code == 2
    assert (project / "train.py").read_bytes() == b"grow = 1\n"
    assert "error: train.py: fixes for EMA905 did not converge in 10 rounds\n" in result.output
    assert result.output.endswith("1 finding remains: 1 fixing the file failed.\n1 file could not be fixed; see the errors above.\n")


def test_read_only_file_is_reported_as_skipped(project: Path) -> None:
    (project / "train.py").chmod(0o444)
    result = _run("--write")
    assert result.exit_code == 1
    assert "skipped: train.py: read-only; not changed (make it writable to fix it)\n" in result.output
    assert (project / "train.py").read_bytes().count(b"torch") == 0


@pytest.mark.parametrize("mode", [(), ("--write",)], ids=["diff", "write"])
def test_syntax_error_is_a_finding_as_in_check(project: Path, mode: tuple[str, ...]) -> None:
    (project / "train.py").write_bytes(b"def f(:\n")
    result = _run(*mode)
    assert (result.exit_code, result.output) == (
        1,
        "train.py:1:7: EMA001 cannot parse: invalid syntax\nNo fixes to apply.\n"
        "1 finding remains: 1 the file could not be checked.\n",
    )


def test_read_only_file_in_diff_mode_shows_no_diff_and_keeps_its_findings(project: Path) -> None:
    (project / "train.py").write_bytes(b"total += loss\n")
    (project / "train.py").chmod(0o444)
    result = _run()
    assert (result.exit_code, result.output) == (
        1,
        "train.py:1:1: EMA902 [*] `loss` is accumulated with its graph\n"
        "  help: Detach `loss`\n"
        "skipped: train.py: read-only; not changed (make it writable to fix it)\n"
        "No fixes to apply.\n"
        "1 finding remains: 1 the file was skipped.\n",
    )
