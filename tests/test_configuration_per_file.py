"""Each file follows its nearest configuration, whatever the order of the paths: standalone
`ema-lint.toml`/`.ema-lint.toml`, `extend`, `--config FILE` and `--config 'KEY = VALUE'`,
per-file-ignores with `**` and braces, and git's own ignore files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ema_lint.cli import main

ACCUMULATES = (
    "import torch\n"
    "model = torch.nn.Linear(2, 2)\n"
    "total = 0\n"
    "for step in range(3):\n"
    "    loss = model(torch.randn(2, 2)).sum()\n"
    "    loss.backward()\n"
    "    total += loss\n"
)
CHECKPOINTS_BN = (
    "import torch\n"
    "from torch.utils.checkpoint import checkpoint\n"
    "class Block(torch.nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.bn = torch.nn.BatchNorm2d(4)\n"
    "    def forward(self, x):\n"
    "        return checkpoint(self.bn, x, use_reentrant=False)\n"
)
BOTH = ACCUMULATES + CHECKPOINTS_BN.replace("import torch\n", "", 1)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _codes(*args: str) -> list[str]:
    """`path:code` of each finding, in output order."""
    result = CliRunner().invoke(main, ["check", "--no-cache", "-j", "1", "-q", "--output-format", "concise", *args])
    # 2: a configuration problem (EMA002) is among the findings
    assert result.exit_code in (0, 1, 2), result.output
    return [f"{line.split(':')[0]}:{line.split(': ')[1].split()[0]}" for line in result.output.splitlines() if ": EMA" in line]


@pytest.fixture
def monorepo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _write(
        tmp_path,
        {
            "pyproject.toml": "[tool.ema-lint]\nignore = []\n",
            "vision/pyproject.toml": '[project]\nname = "vision"\n\n[tool.ema-lint]\nselect = ["EMA1"]\n',
            "vision/a.py": BOTH,
            "audio/ema-lint.toml": 'ignore = ["EMA101"]\n',
            "audio/b.py": BOTH,
            "text/c.py": BOTH,
        },
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_each_file_follows_its_nearest_configuration_in_any_order(monorepo: Path) -> None:
    forward = _codes("vision/a.py", "audio/b.py", "text/c.py")
    assert forward == [
        "audio/b.py:EMA202",
        "text/c.py:EMA202",
        "text/c.py:EMA101",
        "vision/a.py:EMA101",
    ]
    assert _codes("text/c.py", "audio/b.py", "vision/a.py") == forward
    assert _codes(".") == forward


def test_a_dotted_standalone_file_wins_over_the_others_in_its_folder(monorepo: Path) -> None:
    (monorepo / "audio" / ".ema-lint.toml").write_text('select = ["EMA1"]\n')
    assert _codes("audio/b.py") == ["audio/b.py:EMA101"]


def test_extend_inherits_and_the_extending_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(
        tmp_path,
        {
            "base.toml": 'select = ["EMA2"]\nfail-on = "error"\n',
            "pkg/ema-lint.toml": 'extend = "../base.toml"\nextend-select = ["EMA101"]\n',
            "pkg/m.py": BOTH,
        },
    )
    monkeypatch.chdir(tmp_path)
    assert _codes("pkg") == ["pkg/m.py:EMA202", "pkg/m.py:EMA101"]


def test_an_extend_cycle_is_reported_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, {"a/ema-lint.toml": 'extend = "../b.toml"\n', "b.toml": 'extend = "a/ema-lint.toml"\n', "a/m.py": BOTH})
    monkeypatch.chdir(tmp_path)
    codes = _codes("a")
    assert "b.toml:EMA002" in codes and "a/m.py:EMA202" in codes


def test_config_key_value_overrides_every_file(monorepo: Path) -> None:
    # the override replaces the key: audio's own `ignore = ["EMA101"]` no longer applies
    assert _codes(".", "--config", 'ignore = ["EMA2"]') == [
        "audio/b.py:EMA101",
        "text/c.py:EMA101",
        "vision/a.py:EMA101",
    ]


def test_config_file_applies_to_every_file(monorepo: Path) -> None:
    assert _codes(".", "--config", "audio/ema-lint.toml") == [
        "audio/b.py:EMA202",
        "text/c.py:EMA202",
        "vision/a.py:EMA202",
    ]


def test_a_config_value_that_is_neither_a_file_nor_toml_is_a_usage_error(monorepo: Path) -> None:
    result = CliRunner().invoke(main, ["check", "--config", "missing.toml", "."])
    assert result.exit_code == 2 and "neither a configuration file nor a TOML" in result.output


def test_a_named_pyproject_without_the_table_is_reported(monorepo: Path) -> None:
    (monorepo / "other.toml").mkdir()
    (monorepo / "plain").mkdir()
    (monorepo / "plain" / "pyproject.toml").write_text('[project]\nname = "plain"\n')
    codes = _codes("text", "--config", "plain/pyproject.toml")
    assert "plain/pyproject.toml:EMA002" in codes


def test_per_file_ignores_take_double_stars_and_braces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(
        tmp_path,
        {
            "pyproject.toml": (
                '[tool.ema-lint]\nper-file-ignores = { "**/{tests,docs}/*.py" = ["EMA2"], "scripts/" = ["EMA1"], '
                '"never/*.py" = ["EMA1"] }\n'
            ),
            "src/tests/t.py": BOTH,
            "docs/d.py": BOTH,
            "scripts/deep/s.py": BOTH,
            "src/m.py": BOTH,
        },
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["check", "--no-cache", "-j", "1", "-q", "--output-format", "concise", "."])
    assert "warning: pyproject.toml: per-file-ignores pattern 'never/*.py' matches no file" in result.output
    assert _codes(".") == [
        "docs/d.py:EMA101",
        "scripts/deep/s.py:EMA202",
        "src/m.py:EMA202",
        "src/m.py:EMA101",
        "src/tests/t.py:EMA101",
    ]


def test_git_info_exclude_and_escaped_patterns_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(
        tmp_path,
        {
            ".git/info/exclude": "scratch/\n",
            ".gitignore": "\\#draft.py\nliteral\\*.py\n",
            "scratch/x.py": BOTH,
            "#draft.py": BOTH,
            "literal*.py": BOTH,
            "literalA.py": ACCUMULATES,
        },
    )
    monkeypatch.chdir(tmp_path)
    assert _codes(".") == ["literalA.py:EMA202"]


def test_an_extended_files_patterns_stay_relative_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(
        tmp_path,
        {
            "ema-lint.toml": 'exclude = ["pkg/generated/"]\nper-file-ignores = { "pkg/legacy/*.py" = ["EMA2"] }\n',
            "pkg/ema-lint.toml": 'extend = "../ema-lint.toml"\n',
            "pkg/generated/model.py": ACCUMULATES,
            "pkg/legacy/old.py": ACCUMULATES,
            "pkg/new.py": ACCUMULATES,
        },
    )
    monkeypatch.chdir(tmp_path)
    assert _codes(".") == ["pkg/new.py:EMA202"]


def test_a_negated_per_file_ignore_applies_everywhere_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(
        tmp_path,
        {"ema-lint.toml": 'per-file-ignores = { "!tests/**" = ["EMA202"] }\n', "src/s.py": ACCUMULATES, "tests/t.py": ACCUMULATES},
    )
    monkeypatch.chdir(tmp_path)
    assert _codes(".") == ["tests/t.py:EMA202"]


def test_a_bad_override_is_reported_once_against_the_command_line(monorepo: Path) -> None:
    result = CliRunner().invoke(
        main, ["check", "--no-cache", "-j", "1", "-q", "--output-format", "concise", ".", "--config", 'fail-on = "bogus"']
    )
    assert result.output.count("EMA002") == 1 and "<--config>:1:1: EMA002 `fail-on` must be one of" in result.output


def test_only_escaped_hash_and_bang_lose_their_backslash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, {".git/HEAD": "", ".gitignore": "\\*.py\n", "train.py": ACCUMULATES})
    monkeypatch.chdir(tmp_path)
    assert _codes(".") == ["train.py:EMA202"]  # `\*.py` names a file called `*.py` only
