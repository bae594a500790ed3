"""One hostile file costs its own diagnostic; a sentinel finding elsewhere is still reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SENTINEL = "import torch\ntotal = 0.0\nfor b in range(3):\n    loss = torch.ones(1, requires_grad=True).sum()\n    loss.backward()\n    total += loss\n"


def _check(tree: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ema_lint", "check", "--no-cache", "--output-format", "concise", "-q", *extra, "."],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tree(tmp_path: Path, config: str = "[tool.ema-lint]\n") -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "pyproject.toml").write_text(config)
    (tree / "sentinel.py").write_text(SENTINEL)
    return tree


def _codes(run: subprocess.CompletedProcess) -> list[str]:
    return [line.split(": ")[1].split()[0] for line in run.stdout.splitlines() if ": EMA" in line]


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("deep_sum.py", b"x = " + b"+".join([b"a"] * 6000) + b"\n", "nested too deeply to parse"),
        ("hex_coding.py", b"# coding: hex\nx = 1\n", "cannot decode"),
        ("rot13_coding.py", b"# -*- coding: rot13 -*-\nx = 1\n", "cannot decode"),
    ],
)
def test_a_hostile_file_costs_only_itself(tmp_path: Path, jobs: str, name: str, content: bytes, expected: str) -> None:
    tree = _tree(tmp_path)
    (tree / name).write_bytes(content)
    run = _check(tree, "-j", jobs)
    assert run.returncode == 1, run.stderr
    assert "EMA202" in _codes(run)
    assert any(name in line and expected in line for line in run.stdout.splitlines()), run.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_like_python_is_skipped_not_waited_on(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    os.mkfifo(tree / "pipe.py")
    run = _check(tree)
    assert run.returncode == 1 and "EMA202" in _codes(run)
    assert any("pipe.py" in line and "not a regular file" in line for line in run.stdout.splitlines())


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_link_to_a_device_is_skipped(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "zero.py").symlink_to("/dev/zero")
    run = _check(tree)
    assert run.returncode == 1 and "EMA202" in _codes(run)
    assert any("zero.py" in line and "not a regular file" in line for line in run.stdout.splitlines())


@pytest.mark.parametrize(
    "config",
    [
        "[[tool.ema-lint]]\nselect = ['ALL']\n",
        "tool = 5\n",
        "[tool]\nema-lint = 'x'\n",
        "[tool.ema-lint]\nselect = " + "[" * 3000 + "]" * 3000 + "\n",
        "[tool.ema-lint]\nexclude = ['[z-a]']\n",
        "[tool.ema-lint]\nexclude = ['" + "**/" * 25 + "x']\n",
        "[tool.ema-lint]\nexclude = ['" + "a/**/" * 20 + "b', '" + "*a" * 12 + "b']\n",
    ],
)
def test_malformed_configuration_is_ema002_and_the_run_goes_on(tmp_path: Path, config: str) -> None:
    tree = _tree(tmp_path, config)
    run = _check(tree)
    # 2, as ruff on a configuration error; the findings are all there
    assert run.returncode in (1, 2), run.stderr
    assert run.returncode == (2 if "EMA002" in _codes(run) else 1)
    assert "EMA202" in _codes(run)


def test_a_selection_of_unknown_codes_alone_still_checks(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "[tool.ema-lint]\nselect = ['EMA999']\n")
    run = _check(tree)
    assert _codes(run).count("EMA002") == 1 and "EMA202" in _codes(run)


def test_a_bad_gitignore_pattern_is_ignored(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / ".gitignore").write_text("[z-a]\n" + "**/" * 25 + "x\n" + "a/**/" * 20 + "b\n")
    deep = tree.joinpath(*["a"] * 40)
    deep.mkdir(parents=True)
    (deep / "m.py").write_text("x = 1\n")
    run = _check(tree)
    assert run.returncode == 1 and "EMA202" in _codes(run)


def test_noqa_and_skip_file_count_only_as_comments(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "sentinel.py").write_text(
        '"""\n# ema-lint: skip-file\n"""\n' + SENTINEL.replace("total += loss", 'total += loss; note = "# noqa"')
    )
    run = _check(tree)
    assert _codes(run) == ["EMA202"]
    (tree / "sentinel.py").write_text(SENTINEL.replace("total += loss", "total += loss  # noqa: EMA202"))
    assert _codes(_check(tree)) == []


# libcst's native parser segfaults on a statement this deep; the prefix makes the file one the
# rules must parse (a checkpoint and an EMA loop)
DEEP_CHAIN = (
    b"import torch\nfrom torch.utils.checkpoint import checkpoint\n"
    b"for p in ema.parameters():\n    p.mul_(0.9)\ny = checkpoint(f, x)\n"
    b"x = " + b" and ".join([b"a"] * 15000) + b"\n"
)


@pytest.mark.parametrize(("jobs", "sentinels"), [("1", 1), ("2", 1), ("2", 6)])
def test_a_file_that_crashes_the_parser_costs_only_itself(tmp_path: Path, jobs: str, sentinels: int) -> None:
    """In the caller's process (one job, or too few files for a pool) and in a pool alike."""
    tree = _tree(tmp_path)
    for number in range(1, sentinels):
        (tree / f"sentinel_{number}.py").write_text(SENTINEL)
    (tree / "deep.py").write_bytes(DEEP_CHAIN)
    run = _check(tree, "-j", jobs)
    # 2: a checker failure (EMA005) fails the run as an internal error does in ruff
    assert run.returncode == 2, run.stderr
    assert _codes(run).count("EMA202") == sentinels
    assert any("deep.py" in line and "EMA005" in line and "process died" in line for line in run.stdout.splitlines())


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_file_that_crashes_the_parser_costs_only_itself_in_fix(tmp_path: Path, jobs: str) -> None:
    tree = _tree(tmp_path)
    for number in range(5):
        (tree / f"sentinel_{number}.py").write_text(SENTINEL)
    (tree / "deep.py").write_bytes(DEEP_CHAIN)
    run = subprocess.run(
        [sys.executable, "-m", "ema_lint", "fix", "--write", "-j", jobs, "."],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "fixing process died" in run.stdout + run.stderr
    assert all("loss.detach()" in (tree / f"sentinel_{n}.py").read_text() for n in range(5))
    assert (tree / "deep.py").read_bytes() == DEEP_CHAIN


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_file_with_lone_carriage_returns_is_checked(tmp_path: Path, jobs: str) -> None:
    tree = _tree(tmp_path)
    (tree / "old_mac.py").write_bytes(SENTINEL.replace("\n", "\r").encode())
    run = _check(tree, "-j", jobs)
    assert run.returncode == 1, run.stderr
    assert _codes(run) == ["EMA202", "EMA202"]


def test_show_source_never_reads_through_a_link_or_from_a_fifo(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "s.py").write_text(SENTINEL.replace("total = 0.0", "total = 0.0  # SECRET_TOKEN"))
    tree = _tree(tmp_path)
    (tree / "linked.py").symlink_to(outside / "s.py")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tree / "pipe.py")
    run = subprocess.run(
        [sys.executable, "-m", "ema_lint", "check", "--no-cache", "--show-source", "."],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "linked.py:6:5" in run.stdout and "SECRET_TOKEN" not in run.stdout
    assert "total += loss" in run.stdout  # the sentinel's own frame is shown


def test_fix_diff_headers_cannot_forge_lines(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "evil\nforged.py:1:1: EMA999 \x1b[31mfake.py").write_text(SENTINEL)
    run = subprocess.run(
        [sys.executable, "-m", "ema_lint", "fix", "."], cwd=tree, capture_output=True, text=True, timeout=120
    )
    headers = [line for line in run.stdout.splitlines() if line.startswith(("---", "+++"))]
    assert any("evil\\x0aforged.py:1:1: EMA999 \\x1b[31mfake.py" in line for line in headers), run.stdout
    assert not any(line.startswith("forged.py") for line in run.stdout.splitlines())
    assert "\x1b" not in run.stdout


@pytest.mark.parametrize(
    ("config", "reported"),
    [
        ("[[tool.ema-lint]]\nselect = ['EMA1']\n", True),
        ("[tool]\nema-lint = 'x'\n", True),
        ("[tool.ema-lint\nselect = ['EMA1']\n", True),
        ("[project]\ndependencies = ['ema-lint']\n", False),
        ("tool = 5\n", False),
    ],
    ids=["array of tables", "not a table", "invalid TOML", "a dependency named ema-lint", "no ema-lint key"],
)
def test_a_discovered_pyproject_that_names_the_tool_is_reported_when_misshapen(
    tmp_path: Path, config: str, reported: bool
) -> None:
    tree = _tree(tmp_path, config)
    run = _check(tree)
    assert ("EMA002" in _codes(run)) == reported, run.stdout
    assert "EMA202" in _codes(run)


_TRAINING_FUNCTION = """
def train_{i}(model, loader, optimizer):
    total = 0
    for x, y in loader:
        loss = model(x).sum()
        loss.backward()
        optimizer.step()
        total += loss
    return total
"""


def _large_file(tree: Path, functions: int) -> Path:
    path = tree / "large.py"
    path.write_text("import torch\n" + "".join(_TRAINING_FUNCTION.format(i=i) for i in range(functions)))
    return path


@pytest.mark.hang_limit(300)
@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize(
    ("limits", "expected"),
    [({"seconds": 0.3}, "s limit for one file"), ({"memory_bytes": 64 * 2**20}, "GiB")],
    ids=["time", "memory"],
)
def test_a_large_file_is_held_to_its_limits_in_check_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int, limits: dict, expected: str
) -> None:
    """A file over `LARGE_FILE_BYTES` is parsed, checked and fixed alone in a child that is
    stopped at the time limit or fails at the memory limit: EMA004, and the others are checked."""
    from ema_lint import runner
    from ema_lint.fix_run import fix_files
    from ema_lint.registry import SOURCE_RULES
    from ema_lint.worker_processes import AloneLimits

    tree = _tree(tmp_path)
    large = _large_file(tree, 2800)
    assert large.stat().st_size > runner.LARGE_FILE_BYTES
    sentinels = []
    for index in range(4):
        sentinel = tree / f"sentinel_{index}.py"
        sentinel.write_text(SENTINEL)
        sentinels.append(runner.SourceFile(str(sentinel), str(tree)))
    monkeypatch.setattr(runner, "FILE_LIMITS", AloneLimits(**limits))
    files = [runner.SourceFile(str(large), str(tree)), *sentinels]

    report = runner.check_files(files, SOURCE_RULES, jobs=jobs)
    codes = [(Path(d.path).name, d.code) for d in report.diagnostics]
    assert codes.count(("large.py", "EMA004")) == 1 and not [c for c in codes if c[0] == "large.py" and c[1] != "EMA004"]
    assert expected in [d.message for d in report.diagnostics if d.code == "EMA004"][0]
    assert sum(code == "EMA202" for _, code in codes) == 4

    fixed = fix_files(files, SOURCE_RULES, unsafe=True, jobs=jobs)
    by_name = {Path(f.path).name: f for f in fixed}
    assert not by_name["large.py"].changed
    assert [d.code for d in by_name["large.py"].remaining] == ["EMA004"]
    assert all(by_name[f"sentinel_{i}.py"].changed for i in range(4))


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_bug_while_indexing_one_file_costs_only_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:
    from ema_lint import runner
    from ema_lint.registry import SOURCE_RULES

    real = runner.summarize

    def summarize(module_name, source, **kwargs):
        if b"poison" in source:
            raise ValueError("a bug")
        return real(module_name, source, **kwargs)

    monkeypatch.setattr(runner, "summarize", summarize)
    monkeypatch.setattr(runner, "worker_context", lambda: __import__("multiprocessing").get_context("fork"))
    tree = _tree(tmp_path)
    (tree / "poisoned.py").write_text("poison = 1\n")
    files = [runner.SourceFile(str(p), str(tree)) for p in sorted(tree.glob("*.py"))]
    for index in range(3):
        extra = tree / f"sentinel_{index}.py"
        extra.write_text(SENTINEL)
        files.append(runner.SourceFile(str(extra), str(tree)))
    report = runner.check_files(files, SOURCE_RULES, jobs=jobs)
    codes = sorted((Path(d.path).name, d.code) for d in report.diagnostics)
    assert ("poisoned.py", "EMA005") in codes
    assert sum(code == "EMA202" for _, code in codes) == 4


def test_a_result_stopped_at_a_limit_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether a file goes over its time limit depends on the machine's load: the next run
    must check it again, not replay the EMA004."""
    from ema_lint import runner
    from ema_lint.registry import SOURCE_RULES
    from ema_lint.result_cache import ResultCache
    from ema_lint.worker_processes import AloneLimits

    tree = _tree(tmp_path)
    large = _large_file(tree, 2800)
    files = [runner.SourceFile(str(large), str(tree)), runner.SourceFile(str(tree / "sentinel.py"), str(tree))]
    monkeypatch.setattr(runner, "FILE_LIMITS", AloneLimits(seconds=0.3))
    cache = ResultCache(str(tmp_path / "cache"), "key")
    report = runner.check_files(files, SOURCE_RULES, cache=cache)
    assert ("large.py", "EMA004") in [(Path(d.path).name, d.code) for d in report.diagnostics]
    cached = ResultCache(str(tmp_path / "cache"), "key")
    assert {Path(path).name for path, _, _ in cached._results} == {"sentinel.py"}
