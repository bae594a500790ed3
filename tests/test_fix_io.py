"""Fix safety on real files (fixtures/_io/fix_*): bytes outside the edit, mode, encoding,
line endings and a missing final newline are preserved; read-only files, symbolic links
and files changed on disk are left alone and reported."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from fix_rules import DetachAccumulatedLoss

from ema_lint.fix_run import fix_files, write_atomically
from ema_lint.runner import SourceFile

IO = Path(__file__).resolve().parent.parent / "fixtures" / "_io"
RULES = [DetachAccumulatedLoss]


def _copy(names: list[str], folder: Path) -> None:
    for name in names:
        shutil.copy2(IO / name, folder / name, follow_symlinks=False)


def _expected(original: bytes) -> bytes:
    """The one change the test rule makes, spelled in the file's own newline."""
    newline = b"\r\n" if b"\r\n" in original else b"\n"
    with_import = original.replace(b"import os" + newline, b"import os" + newline + b"import torch" + newline, 1)
    return with_import.replace(b"total += loss", b"total += loss.detach()", 1)


def _fix(folder: Path, names: list[str], write: bool = True):
    files = [SourceFile(str(folder / name), str(folder)) for name in names]
    return fix_files(files, RULES, write=write)


@pytest.mark.parametrize(
    "name", ["fix_crlf.py", "fix_latin1.py", "fix_bom.py", "fix_no_final_newline.py", "fix_executable.py"]
)
def test_fix_changes_only_the_edited_bytes_and_keeps_the_mode(tmp_path: Path, name: str) -> None:
    _copy([name], tmp_path)
    original = (tmp_path / name).read_bytes()
    mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
    [outcome] = _fix(tmp_path, [name])
    assert outcome.written and outcome.error is None and outcome.remaining == []
    assert (tmp_path / name).read_bytes() == _expected(original) != original
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode
    assert sorted(os.listdir(tmp_path)) == [name], "no temporary file is left behind"
    [again] = _fix(tmp_path, [name])
    assert not again.changed and not again.written


def test_fixture_bytes_are_what_the_cases_claim() -> None:
    assert (IO / "fix_crlf.py").read_bytes().count(b"\r\n") == 10 and b"\n" not in (
        (IO / "fix_crlf.py").read_bytes().replace(b"\r\n", b"")
    )
    assert (IO / "fix_bom.py").read_bytes().startswith(b"\xef\xbb\xbf")
    assert b"caf\xe9" in (IO / "fix_latin1.py").read_bytes()
    assert not (IO / "fix_no_final_newline.py").read_bytes().endswith(b"\n")
    assert os.stat(IO / "fix_executable.py").st_mode & stat.S_IXUSR
    assert os.readlink(IO / "fix_link.py") == "fix_link_target.py"


def test_read_only_file_is_reported_and_not_touched(tmp_path: Path) -> None:
    _copy(["fix_read_only.py"], tmp_path)
    path = tmp_path / "fix_read_only.py"
    original = path.read_bytes()
    os.chmod(path, 0o444)
    [outcome] = _fix(tmp_path, ["fix_read_only.py"])
    assert outcome.skipped == "read-only; not changed (make it writable to fix it)"
    assert not outcome.written and [d.code for d in outcome.remaining] == ["EMA902"]
    assert path.read_bytes() == original and stat.S_IMODE(os.stat(path).st_mode) == 0o444


def test_symlink_whose_target_is_given_too_fixes_the_target_once(tmp_path: Path) -> None:
    _copy(["fix_link.py", "fix_link_target.py"], tmp_path)
    original = (tmp_path / "fix_link_target.py").read_bytes()
    outcomes = _fix(tmp_path, ["fix_link.py", "fix_link_target.py"])
    assert [(Path(o.path).name, o.written) for o in outcomes] == [("fix_link_target.py", True)]
    assert os.readlink(tmp_path / "fix_link.py") == "fix_link_target.py", "the link stays a link"
    assert (tmp_path / "fix_link_target.py").read_bytes() == _expected(original)


def test_symlink_to_a_file_outside_the_given_paths_is_checked_not_fixed(tmp_path: Path) -> None:
    _copy(["fix_link.py", "fix_link_target.py"], tmp_path)
    original = (tmp_path / "fix_link_target.py").read_bytes()
    [outcome] = _fix(tmp_path, ["fix_link.py"])
    assert outcome.skipped == (
        f"symbolic link to {tmp_path / 'fix_link_target.py'}, which is not among the given paths; fix the target itself"
    )
    assert [d.code for d in outcome.remaining] == ["EMA902"] and not outcome.written
    assert (tmp_path / "fix_link_target.py").read_bytes() == original
    assert os.path.islink(tmp_path / "fix_link.py")


def test_file_reached_twice_through_a_linked_folder_is_fixed_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    _copy(["fix_link_target.py"], tmp_path / "real")
    os.symlink("real", tmp_path / "alias")
    files = [
        SourceFile(str(tmp_path / "real" / "fix_link_target.py"), str(tmp_path)),
        SourceFile(str(tmp_path / "alias" / "fix_link_target.py"), str(tmp_path)),
    ]
    outcomes = fix_files(files, RULES, write=True)
    assert [(os.path.relpath(o.path, tmp_path), dict(o.applied)) for o in outcomes] == [
        ("real/fix_link_target.py", {"EMA902": 1})
    ]


def test_hard_linked_file_is_not_split(tmp_path: Path) -> None:
    _copy(["fix_link_target.py"], tmp_path)
    os.link(tmp_path / "fix_link_target.py", tmp_path / "other.py")
    [outcome] = _fix(tmp_path, ["fix_link_target.py"])
    assert outcome.skipped == "has 2 hard links; replacing it would split them"
    assert os.stat(tmp_path / "other.py").st_nlink == 2


def test_file_changed_on_disk_after_reading_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_bytes(b"edited by someone else\n")
    assert write_atomically(str(path), b"what we read\n", b"our fix\n") == (
        "changed on disk since it was read; not overwritten"
    )
    assert path.read_bytes() == b"edited by someone else\n"
    assert os.listdir(tmp_path) == ["a.py"]


def test_files_outside_the_given_paths_are_untouched(tmp_path: Path) -> None:
    _copy(["fix_crlf.py", "fix_link_target.py"], tmp_path)
    untouched = (tmp_path / "fix_link_target.py").read_bytes()
    _fix(tmp_path, ["fix_crlf.py"])
    assert (tmp_path / "fix_link_target.py").read_bytes() == untouched


def test_diff_mode_writes_nothing(tmp_path: Path) -> None:
    _copy(["fix_crlf.py"], tmp_path)
    original = (tmp_path / "fix_crlf.py").read_bytes()
    [outcome] = _fix(tmp_path, ["fix_crlf.py"], write=False)
    assert outcome.fixed == _expected(original) and not outcome.written
    assert (tmp_path / "fix_crlf.py").read_bytes() == original


def test_worker_processes_give_the_same_result_as_one_process(tmp_path: Path) -> None:
    names = ["fix_crlf.py", "fix_latin1.py", "fix_bom.py", "fix_no_final_newline.py"]
    for folder in ("serial", "parallel"):
        (tmp_path / folder).mkdir()
        _copy(names, tmp_path / folder)
    serial = fix_files([SourceFile(str(tmp_path / "serial" / n), str(tmp_path / "serial")) for n in names], RULES)
    parallel = fix_files(
        [SourceFile(str(tmp_path / "parallel" / n), str(tmp_path / "parallel")) for n in names], RULES, jobs=2
    )
    assert [(o.fixed, dict(o.applied)) for o in parallel] == [(o.fixed, dict(o.applied)) for o in serial]
    assert all(o.fixed == _expected(o.source) for o in parallel)
