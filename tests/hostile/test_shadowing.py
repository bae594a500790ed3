"""`python -m ema_lint` run inside an untrusted tree imports nothing from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CANARY = "import pathlib\npathlib.Path({marker!r}).write_text('imported')\n"


def test_python_dash_m_never_imports_the_checked_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    marker = tmp_path / "SHADOW_RAN"
    for name in ("typing.py", "enum.py", "json.py", "dataclasses.py", "click.py", "libcst.py", "platformdirs.py"):
        (tree / name).write_text(CANARY.format(marker=str(marker)))
    (tree / "pyproject.toml").write_text("[tool.ema-lint]\n")
    run = subprocess.run(
        [sys.executable, "-m", "ema_lint", "check", "--no-cache", "."], cwd=tree, capture_output=True, text=True
    )
    assert run.returncode in (0, 1), run.stderr
    assert not marker.exists()
