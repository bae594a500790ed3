from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from ema_lint.cli import main
from ema_lint.config import find_config, load_settings
from ema_lint.diagnostics import Severity
from ema_lint.discovery import compile_pattern, discover, exclude_patterns, is_ignored


def _names(tmp_path: Path, paths=None, exclude=()) -> list[str]:
    patterns, problems = exclude_patterns(str(tmp_path), exclude)
    assert problems == []
    files, problems = discover([str(p) for p in (paths or [tmp_path])], lambda folder: patterns)
    assert problems == []
    return [os.path.relpath(f.path, tmp_path).replace(os.sep, "/") for f in files]


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")


def test_hidden_virtualenv_and_cache_folders_are_skipped(tmp_path: Path) -> None:
    _touch(tmp_path, "a.py", ".hidden/b.py", "env/lib/c.py", "__pycache__/d.py", "node_modules/e.py", "src/f.py")
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    assert _names(tmp_path) == ["a.py", "src/f.py"]


def test_gitignore_rules_nest_negate_and_anchor(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    _touch(tmp_path, "keep.py", "gen_a.py", "gen_keep.py", "build/x.py", "sub/gen_b.py", "sub/local.py", "sub/deep/y.py", "top.py")
    (tmp_path / ".gitignore").write_text("# generated\ngen_*.py\n!gen_keep.py\nbuild/\n/top.py\n")
    (tmp_path / "sub" / ".gitignore").write_text("deep/\nlocal.py\n")
    assert _names(tmp_path) == ["gen_keep.py", "keep.py"]


def test_gitignore_of_the_repository_applies_when_checking_a_subfolder(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("*_pb2.py\n")
    _touch(tmp_path, "src/model.py", "src/model_pb2.py")
    assert _names(tmp_path, [tmp_path / "src"]) == ["src/model.py"]


def test_double_star_patterns() -> None:
    pattern = compile_pattern("a/**/b.py", "/r")
    assert is_ignored("/r/a/b.py", False, [pattern])
    assert is_ignored("/r/a/x/y/b.py", False, [pattern])
    assert not is_ignored("/r/c/a/b.py", False, [pattern])
    anywhere = compile_pattern("**/tmp", "/r")
    assert is_ignored("/r/x/tmp", True, [anywhere])


def test_config_exclude_and_explicit_files(tmp_path: Path) -> None:
    _touch(tmp_path, "a.py", "third_party/b.py", "tests/data/c.py")
    assert _names(tmp_path, exclude=("third_party", "tests/data/")) == ["a.py"]
    # a file named on the command line is checked even when excluded, as in ruff
    assert _names(tmp_path, [tmp_path / "third_party" / "b.py"], exclude=("third_party",)) == ["third_party/b.py"]


def test_settings_read_from_nearest_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.ema-lint]\nselect = ["EMA0"]\nignore = ["EMA004"]\nexclude = ["gen"]\n'
        'per-file-ignores = {"tests/*" = ["EMA001"]}\nfail-on = "warning"\n'
    )
    (tmp_path / "pkg").mkdir()
    settings = load_settings(find_config(str(tmp_path / "pkg")))
    assert settings.root == str(tmp_path)
    assert settings.select == ("EMA0",) and settings.ignore == ("EMA004",) and settings.exclude == ("gen",)
    assert settings.per_file_ignores == (("tests/*", ("EMA001",)),)
    assert settings.fail_on is Severity.WARNING and settings.problems == ()


def test_bad_config_is_a_diagnostic_and_the_run_goes_on(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.ema-lint]\nselect = "EMA1"\nunknown-key = 1\nfail-on = "loud"\n'
        'per-file-ignores = ["x"]\n'
    )
    (tmp_path / "bad.py").write_text("def f(:\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["check", "--no-cache", "--output-format", "concise", "-q"])
    # the run goes on, and exits 2 as ruff does on a configuration error
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "bad.py:1:7: EMA001 cannot parse: invalid syntax",
        "pyproject.toml:5:1: EMA002 `select` must be a list of strings",
        "pyproject.toml:6:1: EMA002 unknown key `unknown-key` in [tool.ema-lint]; known keys: select, ignore, "
        "extend-select, exclude, extend-exclude, per-file-ignores, fail-on",
        "pyproject.toml:7:1: EMA002 `fail-on` must be one of error, warning, info, not 'loud'",
        "pyproject.toml:8:1: EMA002 `per-file-ignores` must map glob patterns to lists of codes",
    ]


def test_invalid_toml_is_reported_with_its_line(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.ema-lint]\nselect = [\n")
    (tmp_path / "ok.py").write_text("x = 1\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["check", "--no-cache", "--output-format", "concise", "-q"])
    assert result.exit_code == 2
    assert result.output.startswith("pyproject.toml:") and "EMA002 invalid TOML" in result.output


def test_per_file_ignores_and_fail_on(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.ema-lint]\nper-file-ignores = {"legacy/*" = ["EMA001"]}\n')
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "old.py").write_text("print 'x'\n")
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["check", "--no-cache"]).exit_code == 0
