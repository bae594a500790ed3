"""`ema-lint check` is safe on an untrusted tree: nothing in it is imported or run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CANARY = """
import pathlib
pathlib.Path({marker!r}).write_text("imported " + __name__)
"""

# Names a careless checker could import from the checked tree: its own modules, the
# packages it depends on (shadowing), and files tools conventionally execute.
PLANTED = ("canary.py", "__init__.py", "conftest.py", "setup.py", "libcst.py", "click.py", "torch.py", "ema_lint.py")


def test_checked_tree_is_never_imported(tmp_path: Path) -> None:
    tree = tmp_path / "untrusted"
    (tree / "pkg").mkdir(parents=True)
    marker = tmp_path / "CANARY_RAN"
    for name in PLANTED:
        (tree / name).write_text(CANARY.format(marker=str(marker)))
        (tree / "pkg" / name).write_text(CANARY.format(marker=str(marker)))
    (tree / "pyproject.toml").write_text('[tool.ema-lint]\nselect = ["ALL"]\n')
    (tree / "model.py").write_text(
        "import canary\nfrom pkg import canary as c2\nimport torch\n"
        "from torch.utils.checkpoint import checkpoint\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.bn = torch.nn.BatchNorm1d(4)\n"
        "    def forward(self, x):\n        return checkpoint(self.bn, x, use_reentrant=False)\n"
    )
    executable = shutil.which("ema-lint", path=os.path.dirname(sys.executable))
    assert executable, "the console script must be installed next to the interpreter"
    for jobs in ("1", "2"):
        completed = subprocess.run(
            [executable, "check", "--no-cache", "--jobs", jobs, "."],
            cwd=tree,
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        assert completed.returncode in (0, 1), completed.stderr
        assert not marker.exists(), f"checked code ran: {marker.read_text()}"
