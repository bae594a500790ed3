"""The result cache is data, never code, and never a way out of its folder."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

HAZARD = (
    "import torch\n"
    "from torch.utils.checkpoint import checkpoint\n"
    "class Net(torch.nn.Module):\n"
    "    def __init__(self):\n        super().__init__()\n        self.bn = torch.nn.BatchNorm1d(4)\n"
    "    def forward(self, x):\n        return checkpoint(self.bn, x, use_reentrant=False)\n"
)


class _RunsCode:
    """Unpickling this runs `open(marker, 'w')`: what a planted pickle cache could do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _check(tree: Path, cache: Path | None, *extra: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EMA_LINT_CACHE_DIR")}
    if cache is not None:
        environment["EMA_LINT_CACHE_DIR"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "ema_lint", "check", "--output-format", "concise", "-q", *extra, "."],
        cwd=tree,
        capture_output=True,
        text=True,
        env=environment,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "pyproject.toml").write_text("[tool.ema-lint]\n")
    (tree / "model.py").write_text(HAZARD)
    return tree


def test_a_pickle_planted_in_the_tree_or_the_cache_folder_never_runs(tree: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PICKLE_RAN"
    cache = tmp_path / "cache"
    first = _check(tree, cache)
    assert first.returncode == 1 and "EMA101" in first.stdout
    (stored,) = cache.glob("*.json")
    payload = pickle.dumps(_RunsCode(str(marker)))
    # the old layout (a pickle in the checked tree), and every file of today's cache folder
    (tree / ".ema_lint_cache").mkdir()
    (tree / ".ema_lint_cache" / f"{stored.stem}.pickle").write_bytes(payload)
    stored.write_bytes(payload)
    second = _check(tree, cache)
    assert not marker.exists()
    assert second.returncode == 1 and "EMA101" in second.stdout
    assert "cache ignored and rebuilt" in second.stderr
    # rebuilt as JSON
    json.loads(stored.read_text())


def test_a_cache_of_the_wrong_shape_is_ignored_and_rebuilt(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _check(tree, cache)
    (stored,) = cache.glob("*.json")
    data = json.loads(stored.read_text())
    data[2] = [["model.py", "0" * 32, None, {"not": "a diagnostic"}]]
    stored.write_text(json.dumps(data))
    run = _check(tree, cache)
    assert run.returncode == 1 and "EMA101" in run.stdout
    assert "cache ignored and rebuilt" in run.stderr


def test_the_default_cache_is_outside_the_checked_tree(tree: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EMA_LINT_CACHE_DIR")}
    environment.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    run = subprocess.run(
        [sys.executable, "-m", "ema_lint", "check", "-q", "."], cwd=tree, capture_output=True, text=True, env=environment
    )
    assert run.returncode == 1, run.stderr
    assert sorted(p.name for p in tree.iterdir()) == ["model.py", "pyproject.toml"]
    assert list((home / ".cache" / "ema-lint").glob("*.json"))


def test_symlinks_in_the_cache_folder_are_never_followed(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious\n")
    cache = tmp_path / "cache"
    _check(tree, cache)
    (stored,) = cache.glob("*.json")
    stored.unlink()
    stored.symlink_to(victim)
    (cache / ".gitignore").unlink()
    (cache / ".gitignore").symlink_to(outside / "dangling")
    run = _check(tree, cache)
    assert run.returncode == 1 and "EMA101" in run.stdout
    assert victim.read_text() == "precious\n"
    assert not (outside / "dangling").exists()
    assert not stored.is_symlink() and json.loads(stored.read_text())


def test_a_symlinked_cache_folder_is_not_written_through(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = tmp_path / "cache"
    cache.symlink_to(outside, target_is_directory=True)
    run = _check(tree, cache)
    assert run.returncode == 1 and "EMA101" in run.stdout
    assert "cache not written" in run.stderr
    assert list(outside.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_an_unwritable_cache_is_a_note_not_a_failure(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        run = _check(tree, cache)
    finally:
        cache.chmod(0o700)
    assert run.returncode == 1 and "EMA101" in run.stdout
    assert "cache not written" in run.stderr


@pytest.mark.parametrize("below_a_file", [False, True])
def test_a_cache_folder_that_cannot_be_made_is_a_note_not_a_failure(tree: Path, tmp_path: Path, below_a_file) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder\n")
    run = _check(tree, blocker / "cache" if below_a_file else blocker)
    assert run.returncode == 1 and "EMA101" in run.stdout
    assert "cache not written" in run.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_at_the_cache_file_neither_hangs_nor_fails(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _check(tree, cache)
    (stored,) = cache.glob("*.json")
    stored.unlink()
    os.mkfifo(stored)
    run = subprocess.run(
        [sys.executable, "-m", "ema_lint", "check", "--output-format", "concise", "-q", "."],
        cwd=tree,
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "EMA_LINT_CACHE_DIR": str(cache)},
        timeout=60,
    )
    assert run.returncode == 1 and "EMA101" in run.stdout


def test_a_stored_position_out_of_range_is_rebuilt(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _check(tree, cache)
    (stored,) = cache.glob("*.json")
    text = stored.read_text()
    data = json.loads(text)
    diagnostic = data[3][0][3][1][0]  # results -> first -> FileResult -> diagnostics -> first
    diagnostic[4] = [8, 10**19]
    stored.write_text(json.dumps(data))
    run = _check(tree, cache, "--show-source")
    assert run.returncode == 1 and "EMA101" in run.stdout
    assert "cache ignored and rebuilt" in run.stderr


def test_a_linked_cache_folder_is_not_read(tree: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    _check(tree, real)
    (stored,) = real.glob("*.json")
    data = json.loads(stored.read_text())
    data[3][0][3][1] = []  # forge: no findings
    stored.write_text(json.dumps(data))
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    run = _check(tree, link)
    assert run.returncode == 1 and "EMA101" in run.stdout
