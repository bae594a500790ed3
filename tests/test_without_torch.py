"""The linter installs and runs without PyTorch; what needs it says so."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run the command line with `torch` unimportable, as in an environment that never installed it.
HIDE_TORCH = """
import sys

class HideTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideTorch())
sys.argv = ["ema-lint", *sys.argv[1:]]
from ema_lint.cli import run
run()
"""

HAZARD = (
    "import torch\ntotal = 0\nfor i in range(3):\n"
    "    loss = torch.ones(1, requires_grad=True).sum()\n    loss.backward()\n    total += loss\n"
)


def _without_torch(cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", HIDE_TORCH, *arguments], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_torch_is_an_extra_not_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.split(">")[0].split("=")[0].strip() == "torch" for d in project["dependencies"])
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["model"])


def test_check_and_fix_run_without_torch(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(HAZARD)
    checked = _without_torch(tmp_path, "check", "--no-cache", "--output-format", "concise", "-q", ".")
    assert checked.returncode == 1, checked.stderr
    assert checked.stdout.startswith("train.py:6:5: EMA202")
    fixed = _without_torch(tmp_path, "fix", "--write", "-q", ".")
    assert fixed.returncode == 0, fixed.stderr
    assert "total += loss.detach()" in (tmp_path / "train.py").read_text()


def test_the_model_api_says_it_needs_torch(tmp_path: Path) -> None:
    (tmp_path / "factory.py").write_text("def build():\n    return object()\n")
    run = _without_torch(tmp_path, "check-model", "factory:build")
    assert run.returncode == 2 and "pip install 'ema-lint[model]'" in run.stderr
    api = subprocess.run(
        [sys.executable, "-c", HIDE_TORCH.split("sys.argv")[0] + "import ema_lint\nema_lint.transform"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert api.returncode == 1 and "ema_lint.transform needs PyTorch" in api.stderr
