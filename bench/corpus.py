"""The real third-party corpus the benchmarks read: timm, torchvision and transformers at
pinned versions, fetched with `pip download --no-deps` into bench/_corpus (git-ignored) and
unpacked. Never imported; only their `.py` files are read."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

PINNED = ("timm==1.0.31", "torchvision==0.28.0", "transformers==5.23.0")
CORPUS = Path(__file__).resolve().parent / "_corpus"


def corpus_root() -> Path:
    """Download (once) and unpack the pinned wheels; return the folder holding the packages."""
    wheels = CORPUS / "wheels"
    tree = CORPUS / "src"
    if tree.is_dir() and all((tree / spec.split("==")[0]).is_dir() for spec in PINNED):
        return tree
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), *PINNED], check=True
    )
    tree.mkdir(parents=True, exist_ok=True)
    for spec in PINNED:
        name, version = spec.split("==")
        (wheel,) = wheels.glob(f"{name}-{version}-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith(f"{name}/") and m.endswith(".py")]
            archive.extractall(tree, members)
    return tree


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py"))


def count_lines(files: list[Path]) -> int:
    return sum(p.read_bytes().count(b"\n") for p in files)
