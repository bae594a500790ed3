from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from ema_lint import __version__
from ema_lint.cli import main
from ema_lint.diagnostics import Diagnostic, Location, Severity
from ema_lint.render import render_text


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("x = 1\n")
    completed = subprocess.run(
        [sys.executable, "-m", "ema_lint", "check", "--no-cache", str(tmp_path)], capture_output=True, text=True
    )
    assert (completed.returncode, completed.stdout) == (0, "All checks passed!\n")


def test_version() -> None:
    assert CliRunner().invoke(main, ["--version"]).output == f"ema-lint, version {__version__}\n"


def test_colour_frame_marks_code_and_carets() -> None:
    d = Diagnostic("EMA001", "syntax-error", "bad", "f.py", Location(1, 3), Location(1, 5), Severity.ERROR)
    text = render_text([d], show_source=True, read_lines=lambda _: ["x = (1"], style=click.style)
    assert click.style("EMA001", fg="red", bold=True) in text
    assert click.style("^^", fg="red", bold=True) in text
    assert click.unstyle(text) == "f.py:1:3: EMA001 bad\n  |\n1 | x = (1\n  |   ^^\n  |\n"


def test_unknown_rule_code_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["rule", "EMA999"])
    assert result.exit_code == 2 and "unknown code or name 'EMA999'" in result.output


def test_rule_all_lists_tool_codes() -> None:
    output = CliRunner().invoke(main, ["rule", "--all"]).output
    assert output.splitlines()[0].split()[:3] == ["EMA001", "syntax-error", "error"]
