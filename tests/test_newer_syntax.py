"""Syntax newer than the running interpreter is checked like any other file (PEP 695 and
PEP 701 on 3.11)."""

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


PEP_701 = '''import torch
from torch.utils.checkpoint import checkpoint
songs = ["a", "b"]
text = f"""{
    ", ".join(songs)
} and {f"{"deep"}"} {"plain"}""" "tail" f"{songs[0]!r:>{len("ab")}}"
label = f"{"nested"}"


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x):
        return checkpoint(self.norm, x, use_reentrant=False)


total = 0
for step in range(3):
    loss = torch.ones(1, requires_grad=True).sum()
    loss.backward()
    total += loss
'''


def test_pep_701_f_strings_are_checked_whole_with_their_lines(tmp_path: Path) -> None:
    """Quotes reused inside f-strings (3.12) do not parse on 3.11: the file is still
    checked, with no EMA001 or EMA005, and findings after the f-strings keep their lines."""
    target = tmp_path / "strings.py"
    target.write_text(PEP_701)
    report = check_files([SourceFile(str(target), str(tmp_path))], SOURCE_RULES)
    assert [(d.code, d.start.line) for d in report.diagnostics] == [("EMA101", 16), ("EMA202", 23)]


PEP_750 = '''import torch
from torch.utils.checkpoint import checkpoint


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x):
        label = t"""shape {
            x.shape!r:>{len("ab")}
        }"""
        return checkpoint(self.norm, x, use_reentrant=False)


total = 0
for step in range(3):
    loss = torch.ones(1, requires_grad=True).sum()
    loss.backward()
    total += loss
    print(t"step {step} loss {loss}")
'''


def test_pep_750_template_strings_are_checked_whole_with_their_lines(tmp_path: Path) -> None:
    """Template strings (3.14) on 3.11: no EMA001 or EMA005 (a checker failure), and the
    findings after a multi-line template string keep their lines."""
    target = tmp_path / "templates.py"
    target.write_text(PEP_750)
    report = check_files([SourceFile(str(target), str(tmp_path))], SOURCE_RULES)
    assert [(d.code, d.start.line) for d in report.diagnostics] == [("EMA101", 14), ("EMA202", 21)]


def test_what_libcst_cannot_represent_is_ema001_not_a_checker_failure(tmp_path: Path) -> None:
    target = tmp_path / "joined.py"
    target.write_text('x = 1\nlabel = t"a {x}" t"b {x}"\n')
    report = check_files([SourceFile(str(target), str(tmp_path))], SOURCE_RULES)
    assert [d.code for d in report.diagnostics] == ["EMA001"]
