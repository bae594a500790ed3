"""The flake8 plugin, through flake8's own command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ema_lint import __version__
from ema_lint.registry import SOURCE_RULES

ACCUMULATES_LOSS = """\
def train(model, loader, optimizer, criterion):
    running_loss = 0.0
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss{comment}
    print(running_loss)
"""
EMA202_AT_7_9 = (
    "train.py:7:9: EMA202 `running_loss` accumulates `loss` with its autograd graph,"
    " so every step's graph stays in memory\n"
)


def flake8(folder: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flake8", "--isolated", *args],
        cwd=folder,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plugin_is_registered_under_its_name_and_version(tmp_path: Path) -> None:
    result = flake8(tmp_path, "--version")
    assert f"ema-lint: {__version__}" in result.stdout


def test_finding_reported_at_its_position(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(ACCUMULATES_LOSS.format(comment=""))
    result = flake8(tmp_path, "--select", "EMA", "train.py")
    assert (result.returncode, result.stdout, result.stderr) == (1, EMA202_AT_7_9, "")


def test_plugin_runs_with_flake8_default_selection(tmp_path: Path) -> None:
    # Plugins registered under `flake8.extension` are on unless deselected.
    (tmp_path / "train.py").write_text(ACCUMULATES_LOSS.format(comment=""))
    assert flake8(tmp_path, "train.py").stdout == EMA202_AT_7_9


@pytest.mark.parametrize("comment", ["  # noqa", "  # noqa: EMA202", "  # noqa: EMA2", "  # noqa:E501,EMA202"])
def test_flake8_noqa_suppresses(tmp_path: Path, comment: str) -> None:
    (tmp_path / "train.py").write_text(ACCUMULATES_LOSS.format(comment=comment))
    result = flake8(tmp_path, "--select", "EMA", "train.py")
    assert (result.returncode, result.stdout) == (0, "")


def test_noqa_for_another_code_does_not_suppress(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(ACCUMULATES_LOSS.format(comment="  # noqa: EMA201"))
    assert flake8(tmp_path, "--select", "EMA", "train.py").stdout == EMA202_AT_7_9


def test_disable_noqa_is_flake8s_to_decide(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(ACCUMULATES_LOSS.format(comment="  # noqa: EMA202"))
    assert flake8(tmp_path, "--select", "EMA", "--disable-noqa", "train.py").stdout == EMA202_AT_7_9


def test_extend_ignore_and_per_file_ignores(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(ACCUMULATES_LOSS.format(comment=""))
    assert flake8(tmp_path, "--select", "EMA", "--extend-ignore", "EMA2", "train.py").stdout == ""
    assert flake8(tmp_path, "--select", "EMA", "--per-file-ignores", "train.py:EMA202", "train.py").stdout == ""


def test_declared_encoding_keeps_columns_in_characters(tmp_path: Path) -> None:
    source = "# -*- coding: latin-1 -*-\n" + ACCUMULATES_LOSS.format(comment="").replace(
        "running_loss += loss", "ä = 0; running_loss += loss"
    )
    (tmp_path / "train.py").write_bytes(source.encode("latin-1"))
    assert flake8(tmp_path, "--select", "EMA", "train.py").stdout == EMA202_AT_7_9.replace(":7:9:", ":8:16:")


def test_stdin_with_display_name(tmp_path: Path) -> None:
    result = flake8(
        tmp_path, "--select", "EMA", "--stdin-display-name", "train.py", "-", stdin=ACCUMULATES_LOSS.format(comment="")
    )
    assert result.stdout == EMA202_AT_7_9


def test_skip_file_comment_is_honoured(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("# ema-lint: skip-file\n" + ACCUMULATES_LOSS.format(comment=""))
    assert flake8(tmp_path, "--select", "EMA", "train.py").stdout == ""


def test_every_rule_matches_ema_lint_check(tmp_path: Path) -> None:
    """Every rule's INVALID examples in one flake8 run: flake8 reports what `ema-lint check`
    reports for the same files, and each example's documented message."""
    for rule in SOURCE_RULES:
        for number, example in enumerate(rule.INVALID):
            (tmp_path / f"{rule.code.lower()}_{number}.py").write_text(example.source)
    assert list(tmp_path.iterdir()), "no source rule has an INVALID example"
    checked = subprocess.run(
        [sys.executable, "-m", "ema_lint", "check", "--no-cache", "--output-format", "json", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected = sorted(
        f"{d['filename']}:{d['location']['row']}:{d['location']['column']}: {d['code']} {d['message']}"
        for d in json.loads(checked.stdout)
    )
    for rule in SOURCE_RULES:
        for number, example in enumerate(rule.INVALID):
            if example.message is not None:
                assert any(
                    line.startswith(f"{rule.code.lower()}_{number}.py:") and line.endswith(f" {rule.code} {example.message}")
                    for line in expected
                ), f"{rule.code} INVALID example {number}"
    result = flake8(tmp_path, "--select", "EMA", "--format", "%(path)s:%(row)d:%(col)d: %(code)s %(text)s", ".")
    assert sorted(line.removeprefix("./") for line in result.stdout.splitlines()) == expected
