"""Jupyter notebooks: checked cell by cell, located as `cell N:line:col`, found in folder
runs, and fixed in place with outputs, metadata and the JSON layout left exactly as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ema_lint.cli import main
from ema_lint.notebook import Notebook, NotebookError

IMPORTS = "!pip install torch\nimport torch\nfrom torch.utils.checkpoint import checkpoint\n%matplotlib inline"
BLOCK = (
    "class Block(torch.nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.bn = torch.nn.BatchNorm2d(4)\n"
    "\n"
    "    def forward(self, x):\n"
    "        return checkpoint(self.bn, x, use_reentrant=False)\n"
)
LOOP = (
    "model = Block()\n"
    "total = 0\n"
    "for step in range(3):\n"
    "    loss = model(torch.randn(2, 4, 3, 3)).sum()\n"
    "    loss.backward()\n"
    "    total += loss\n"
    "print('step %d of %d'\n"
    "      %(step, 3))\n"
    "model?"
)
PNG_OUTPUT = {"data": {"image/png": "iVBORw0KGgo=", "text/plain": ["<Figure>"]}, "metadata": {}, "output_type": "display_data"}


def _code(source, outputs=(), as_list=True):
    return {
        "cell_type": "code",
        "execution_count": 1,
        "metadata": {"tags": ["keep"]},
        "outputs": list(outputs),
        "source": source.splitlines(keepends=True) if as_list else source,
    }


def _notebook(*cells, language="python") -> dict:
    return {
        "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Training ü\n"]}, *cells],
        "metadata": {"kernelspec": {"language": language, "name": "python3"}, "language_info": {"name": language}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _jupyter_bytes(document: dict) -> bytes:
    """The layout Jupyter itself writes."""
    return (json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    path = tmp_path / "train.ipynb"
    document = _notebook(
        _code(IMPORTS),
        _code("%%bash\necho total += loss\n", outputs=[{"name": "stdout", "output_type": "stream", "text": ["hi\n"]}]),
        _code(BLOCK, as_list=False),
        _code(LOOP, outputs=[PNG_OUTPUT]),
    )
    path.write_bytes(_jupyter_bytes(document))
    return path


def _check(*args: str):
    return CliRunner().invoke(main, ["check", "--no-cache", "-j", "1", *args])


def test_findings_are_located_by_cell_line_and_column(notebook: Path) -> None:
    result = _check(str(notebook), "--output-format", "concise")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"{notebook}:cell 3:7:16: EMA101 [*] `self.bn` updates running stats twice under `checkpoint`" in lines[0]
    assert lines[1].startswith(f"{notebook}:cell 4:6:5: EMA202")
    assert len([line for line in lines if "EMA" in line]) == 2  # the `%%bash` cell is not Python


def test_json_and_code_frames_use_the_cell(notebook: Path) -> None:
    findings = json.loads(_check(str(notebook), "--output-format", "json").output)
    assert [(f["code"], f["cell"], f["location"]["row"]) for f in findings] == [("EMA101", 3, 7), ("EMA202", 4, 6)]
    framed = _check(str(notebook), "--show-source").output
    assert "6 |     total += loss\n" in framed


def test_folder_runs_include_notebooks(notebook: Path) -> None:
    result = _check(str(notebook.parent), "--output-format", "concise")
    assert result.output.count("train.ipynb:cell") == 2


def test_fix_changes_only_the_code_and_keeps_magics_outputs_and_layout(notebook: Path) -> None:
    before = json.loads(notebook.read_bytes())
    result = CliRunner().invoke(main, ["fix", "--write", "-j", "1", str(notebook)])
    assert result.exit_code == 0, result.output
    raw = notebook.read_bytes()
    after = json.loads(raw)
    assert raw == _jupyter_bytes(after)  # the file is still in Jupyter's layout
    sources = ["".join(c["source"]) for c in after["cells"]]
    assert sources[1].startswith("from ema_lint.runtime import running_stats_context_fn\n!pip install torch\n")
    assert sources[1].endswith("%matplotlib inline")
    assert "context_fn=running_stats_context_fn)" in sources[3]
    assert isinstance(after["cells"][3]["source"], str)  # a cell stored as one string stays one
    assert "    total += loss.detach()\n" in sources[4] and sources[4].endswith("      %(step, 3))\nmodel?")
    assert sources[2] == "".join(before["cells"][2]["source"])
    for old, new in zip(before["cells"], after["cells"]):
        assert {k: v for k, v in old.items() if k != "source"} == {k: v for k, v in new.items() if k != "source"}
    assert after["metadata"] == before["metadata"]
    again = CliRunner().invoke(main, ["fix", "--write", "-j", "1", str(notebook)])
    assert "No fixes to apply" in again.output and notebook.read_bytes() == raw


def test_fix_diff_shows_one_diff_per_changed_cell(notebook: Path) -> None:
    result = CliRunner().invoke(main, ["fix", "-j", "1", str(notebook)])
    headers = [line for line in result.output.splitlines() if line.startswith("--- ")]
    assert [h.rsplit(":", 1)[1] for h in headers] == ["cell 1", "cell 3", "cell 4"]
    assert "+    total += loss.detach()" in result.output


def test_a_layout_that_cannot_be_reproduced_is_never_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "odd.ipynb"
    raw = json.dumps(_notebook(_code(IMPORTS), _code(BLOCK), _code(LOOP)), separators=(",", ":  "))
    path.write_text(raw)
    result = CliRunner().invoke(main, ["fix", "--write", "-j", "1", str(path)])
    assert path.read_text() == raw
    assert "JSON layout" in result.output


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not valid notebook JSON"),
        (json.dumps({"cells": 5}).encode(), "no `cells` list"),
    ],
)
def test_unreadable_notebooks_are_reported_and_the_run_goes_on(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "bad.ipynb").write_bytes(content)
    (tmp_path / "train.py").write_text(f"import torch\nfrom torch.utils.checkpoint import checkpoint\n{BLOCK}")
    result = _check(str(tmp_path), "--output-format", "concise")
    assert f"bad.ipynb:1:1: EMA004 cannot read notebook: {reason}" in result.output
    assert "train.py:9:16: EMA101" in result.output


def test_a_percent_operator_continuing_a_bracket_is_python_not_a_magic() -> None:
    document = _notebook(_code("print('%d'\n      %(3))\nx = !ls\n  %time f()\ny?"))
    python, _ = Notebook(_jupyter_bytes(document)).python()
    assert python.splitlines() == [
        "print('%d'",
        "      %(3))",
        "pass  # ema-lint: IPython magic",
        "  pass  # ema-lint: IPython magic",
        "pass  # ema-lint: IPython magic",
    ]


def test_a_fix_that_drops_a_magic_is_refused() -> None:
    notebook = Notebook(_jupyter_bytes(_notebook(_code("!ls\nx = 1\n"))))
    with pytest.raises(NotebookError, match="removed an IPython magic"):
        notebook.with_python("x = 2\n")


def test_a_question_mark_in_a_comment_is_python(tmp_path: Path) -> None:
    path = tmp_path / "q.ipynb"
    loop = LOOP.replace("    total += loss\n", "    total += loss  # why?\n").replace("range(3):", "range(3):  # enough?")
    path.write_bytes(_jupyter_bytes(_notebook(_code(IMPORTS), _code(BLOCK), _code(loop))))
    codes = [line.split(": ")[1].split()[0] for line in _check(str(path), "--output-format", "concise").output.splitlines() if ": EMA" in line]
    assert codes == ["EMA101", "EMA202"]


def test_an_import_a_fix_needs_goes_below_a_cell_magic(tmp_path: Path) -> None:
    path = tmp_path / "colab.ipynb"
    first = "%%capture\n!pip install timm\nimport torch\nfrom torch.utils.checkpoint import checkpoint\n"
    path.write_bytes(_jupyter_bytes(_notebook(_code(first), _code(BLOCK))))
    assert CliRunner().invoke(main, ["fix", "--write", "-j", "1", str(path)]).exit_code == 0
    cell = "".join(json.loads(path.read_bytes())["cells"][1]["source"])
    assert cell.startswith("%%capture\nfrom ema_lint.runtime import running_stats_context_fn\n!pip install timm\n")


def test_a_lone_surrogate_costs_only_its_notebook(tmp_path: Path) -> None:
    (tmp_path / "bad.ipynb").write_text('{"cells": [{"cell_type": "code", "source": "x = \\"\\ud83d\\"\\n"}]}')
    (tmp_path / "train.py").write_text(f"import torch\nfrom torch.utils.checkpoint import checkpoint\n{BLOCK}")
    result = _check(str(tmp_path), "--output-format", "concise")
    assert "bad.ipynb:1:1: EMA004 cannot read notebook" in result.output and "train.py:9:16: EMA101" in result.output


def test_notebooks_of_other_languages_are_skipped_silently(tmp_path: Path) -> None:
    (tmp_path / "r.ipynb").write_bytes(_jupyter_bytes(_notebook(_code("x <- 1"), language="R")))
    assert _check(str(tmp_path)).output == "All checks passed!\n"
