from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder_of(package: str, package_dir: dict[str, str]) -> Path:
    for prefix in sorted(package_dir, key=len, reverse=True):
        if package == prefix or package.startswith(prefix + "."):
            rest = package[len(prefix) :].lstrip(".").split(".") if package != prefix else []
            return ROOT.joinpath(package_dir[prefix], *[p for p in rest if p])
    return ROOT.joinpath(*package.split("."))


def test_packages_list_matches_every_folder_with_an_init() -> None:
    config = _setuptools_config()
    listed = {str(_folder_of(p, config["package-dir"]).relative_to(ROOT)) for p in config["packages"]}
    on_disk = {
        str(init.parent.relative_to(ROOT))
        for top in ("ema_lint", "passes")
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert listed == on_disk


def test_built_wheel_ships_passes_inside_the_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("ema_lint-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ema_lint/passes/__init__.py" in names
    assert not any(name.startswith("passes/") for name in names), "a bare top-level `passes` must not ship"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ema-lint = ema_lint.cli:run" in zipfile.ZipFile(wheel).read(entry_points).decode()
