"""Syntax newer than the running interpreter is checked like any other file (PEP 695 on 3.11)."""

from __future__ import annotations

from pathlib import Path

from ema_lint.registry import SOURCE_RULES
from ema_lint.runner import SourceFile, check_files

CASE = Path(__file__).resolve().parent.parent / "fixtures" / "EMA101" / "newer_syntax.py"


def test_pep_695_file_is_checked_whole(tmp_path: Path) -> None:
    target = tmp_path / "model.py"
    target.write_bytes(CASE.read_bytes())
    report = check_files([SourceFile(str(target), str(tmp_path))], SOURCE_RULES)
    assert [(d.code, d.start.line) for d in report.diagnostics] == [("EMA101", 15), ("EMA202", 24)]


def test_a_real_syntax_error_is_still_ema001(tmp_path: Path) -> None:
    target = tmp_path / "broken.py"
    target.write_text("def f(:\n    pass\n")
    report = check_files([SourceFile(str(target), str(tmp_path))], SOURCE_RULES)
    assert [d.code for d in report.diagnostics] == ["EMA001"]
