"""The pre-commit hooks in `.pre-commit-hooks.yaml`, through `pre-commit try-repo`.

try-repo builds each hook environment from the package registry in a fresh store, so each
run below installs ema-lint into a new virtualenv. Two runs prove the whole path: the check
hook fails and the fix hook rewrites, then both pass. The linter needs no torch, so the hook
environments get none (a torch install, CPU or CUDA, took minutes per environment); pip's
log proves it. `PIP_CONSTRAINT` would still hold any torch to the suite's own build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

PROJECT = Path(__file__).resolve().parents[1]

HAZARD = """\
def train(model, loader, optimizer, criterion):
    running_loss = 0.0
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss
    print(running_loss)
"""
FIXED = HAZARD.replace("running_loss += loss\n", "running_loss += loss.detach()\n")


def git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=ema-lint tests", "-c", "user.email=tests@ema-lint.invalid", *args],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def snapshot_of_project(destination: Path) -> Path:
    """A one-commit git repository holding the project's files as they are now, so try-repo
    tests the working tree (committed or not) and never reads the test run's own venv."""
    listed = git(PROJECT, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for relative in filter(None, listed):
        source = PROJECT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git(destination, "init", "-q")
    git(destination, "add", "-A")
    git(destination, "commit", "-q", "-m", "snapshot")
    return destination


@pytest.fixture
def user_repository(tmp_path: Path) -> Path:
    repository = tmp_path / "user"
    repository.mkdir()
    (repository / "train.py").write_text(HAZARD)
    git(repository, "init", "-q")
    git(repository, "add", "-A")
    git(repository, "commit", "-q", "-m", "hazard")
    return repository


def try_repo(hooks_repository: Path, user_repository: Path, pip_log: Path, constraints: Path):
    environment = {
        **os.environ,
        "PIP_CONSTRAINT": str(constraints),
        "PIP_LOG": str(pip_log),
        # a developer's own pre-commit config and colours must not leak into the run
        "PRE_COMMIT_COLOR": "never",
        "NO_COLOR": "1",
    }
    environment.pop("PRE_COMMIT_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(hooks_repository), "--all-files"],
        cwd=user_repository,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )


def hook_report(output: str) -> list[tuple[str, str]]:
    """(hook name, Passed/Failed) in the order pre-commit ran them."""
    return re.findall(r"^(ema-lint(?: fix)?)\.+(Passed|Failed)$", output, re.MULTILINE)


def test_manifest_declares_both_hooks() -> None:
    hooks = yaml.safe_load((PROJECT / ".pre-commit-hooks.yaml").read_text())
    assert [(hook["id"], hook["entry"]) for hook in hooks] == [
        # pre-commit names every staged file: --force-exclude keeps the project's excludes
        ("ema-lint", "ema-lint check --force-exclude"),
        ("ema-lint-fix", "ema-lint fix --write --force-exclude"),
    ]
    assert all(hook["language"] == "python" and hook["require_serial"] for hook in hooks)


@pytest.mark.hang_limit(2 * 900 + 120)  # two try-repo runs, each with its own 900 s limit
def test_check_fails_fix_rewrites_then_both_pass(tmp_path: Path, user_repository: Path) -> None:
    hooks_repository = snapshot_of_project(tmp_path / "hooks")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"torch=={torch.__version__}\n")
    pip_log = tmp_path / "pip.log"

    first = try_repo(hooks_repository, user_repository, pip_log, constraints)
    assert first.returncode == 1, first.stdout + first.stderr
    assert hook_report(first.stdout) == [("ema-lint", "Failed"), ("ema-lint fix", "Failed")]
    assert (
        "train.py:7:9: EMA202 [*] `running_loss` accumulates `loss` with its autograd graph,"
        " so every step's graph stays in memory\n"
    ) in first.stdout
    assert "- files were modified by this hook" in first.stdout
    assert (user_repository / "train.py").read_text() == FIXED

    second = try_repo(hooks_repository, user_repository, pip_log, constraints)
    assert (second.returncode, hook_report(second.stdout)) == (
        0,
        [("ema-lint", "Passed"), ("ema-lint fix", "Passed")],
    ), second.stdout + second.stderr
    assert (user_repository / "train.py").read_text() == FIXED

    # one hook environment per run, each with ema-lint and without torch
    installed = re.findall(r"Successfully installed (.*)", pip_log.read_text())
    assert len([line for line in installed if "ema-lint" in line or "ema_lint" in line]) == 2, installed
    assert not any(re.search(r"\btorch-", line) for line in installed), installed
