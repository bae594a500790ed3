"""Bad input gets a clear diagnostic and the run goes on (fixtures/_io/check_*)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ema_lint.cli import main
from ema_lint.discovery import discover
from ema_lint.registry import SOURCE_RULES
from ema_lint.runner import MAX_FILE_BYTES, SourceFile, check_files

IO = Path(__file__).resolve().parent.parent / "fixtures" / "_io"

EXPECTED = {
    "check_bad_encoding.py": "1:1: EMA004 cannot decode: invalid or missing encoding declaration",
    "check_broken_link.py": "1:1: EMA004 cannot read: broken symbolic link",
    "check_link_loop.py": "1:1: EMA004 cannot read: symbolic link loop",
    "check_nul_byte.py": "2:1: EMA004 file contains a NUL byte; not Python source",
    "check_python2.py": "1:1: EMA001 cannot parse: Missing parentheses in call to 'print'. Did you mean print(...)?",
    "check_syntax_error.py": "1:7: EMA001 cannot parse: invalid syntax",
}


def _check(paths: list[str], root: str) -> list[str]:
    files, problems = discover(paths)
    report = check_files(files, SOURCE_RULES)
    return sorted(
        f"{os.path.relpath(d.path, root)}:{d.start.line}:{d.start.column}: {d.code} {d.message}"
        for d in [*problems, *report.diagnostics]
    )


def test_each_bad_file_gets_its_diagnostic_and_the_rest_is_checked() -> None:
    names = sorted(p.name for p in IO.iterdir() if p.name.startswith("check_") and not p.is_dir())
    found = _check([str(IO / name) for name in names], str(IO))
    assert found == sorted(f"{name}:{line}" for name, line in EXPECTED.items())


def test_walking_the_folder_finds_the_same_and_ends_despite_the_loop() -> None:
    found = _check([str(IO)], str(IO))
    mine = [line for line in found if line.startswith("check_")]
    assert mine == sorted(f"{name}:{line}" for name, line in EXPECTED.items())


def test_folder_named_like_a_python_file_is_walked() -> None:
    files, problems = discover([str(IO / "check_dir_named.py")])
    assert [os.path.basename(f.path) for f in files] == ["inner.py"] and problems == []


def test_loop_folder_is_walked_once() -> None:
    files, _ = discover([str(IO / "check_folder_loop")])
    assert [os.path.relpath(f.path, IO) for f in files if "inside" in f.path] == [
        os.path.join("check_folder_loop", "inside.py")
    ]


def test_empty_and_declared_latin1_files_are_clean() -> None:
    assert _check([str(IO / "check_empty.py"), str(IO / "check_latin1_declared.py")], str(IO)) == []


def test_oversized_file_is_reported_not_parsed(tmp_path: Path) -> None:
    big = tmp_path / "generated.py"
    line = b"x = [" + b"1, " * 1000 + b"]\n"
    with open(big, "wb") as handle:
        for _ in range(MAX_FILE_BYTES * 5 // len(line) + 1):  # ~50 MB
            handle.write(line)
    (tmp_path / "fine.py").write_text("y = 1\n")
    found = _check([str(tmp_path)], str(tmp_path))
    assert len(found) == 1
    assert found[0].startswith("generated.py:1:1: EMA004 file is 5") and found[0].endswith(
        f"over the {MAX_FILE_BYTES // 2**20} MiB limit; not checked"
    )


def test_unreadable_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite may run as root, where chmod 000 does not stop reads; simulate the refusal.
    target = tmp_path / "secret.py"
    target.write_text("x = 1\n")
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if os.fspath(path) == str(target):
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    report = check_files([SourceFile(str(target), str(tmp_path))], SOURCE_RULES)
    assert [(d.code, d.message) for d in report.diagnostics] == [("EMA004", "cannot read: Permission denied")]


def test_cli_exit_code_is_one_for_bad_input_and_zero_with_exit_zero(tmp_path: Path) -> None:
    shutil.copy(IO / "check_syntax_error.py", tmp_path / "bad.py")
    runner = CliRunner()
    result = runner.invoke(main, ["check", "--no-cache", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "EMA001 cannot parse: invalid syntax" in result.output
    assert runner.invoke(main, ["check", "--no-cache", "--exit-zero", str(tmp_path)]).exit_code == 0
