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
    """Download (once) and unpack the pinned wheels' `.py` files; return the folder holding the packages."""
    tree = CORPUS / "src"
    for spec in PINNED:
        if not (tree / spec.split("==")[0]).is_dir():
            unpack(spec.split("==")[0], tree, python_only=True)
    return tree


def unpack(name: str, folder: Path, python_only: bool = False) -> Path:
    """Unpack the pinned wheel of `name` (downloaded once into bench/_corpus/wheels) into `folder`."""
    (spec,) = [s for s in PINNED if s.startswith(f"{name}==")]
    version = spec.split("==")[1]
    wheels = CORPUS / "wheels"
    found = sorted(wheels.glob(f"{name}-{version}-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), spec], check=True)
        found = sorted(wheels.glob(f"{name}-{version}-*.whl"))
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[0]) as archive:
        members = [
            m for m in archive.namelist() if m.startswith(f"{name}/") and (m.endswith(".py") or not python_only)
        ]
        archive.extractall(folder, members)
    return folder / name


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py"))


def count_lines(files: list[Path]) -> int:
    return sum(p.read_bytes().count(b"\n") for p in files)
