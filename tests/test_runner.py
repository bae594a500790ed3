"""Parallel checking, the content-hash cache, and crash isolation."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import libcst as cst
import pytest

from ema_lint import worker_processes
from ema_lint.diagnostics import Severity
from ema_lint.registry import SOURCE_RULES, enabled_rules
from ema_lint.rule import Rule
from ema_lint.runner import ResultCache, SourceFile, check_files


class ReportsEveryCall(Rule):
    """Test-only rule: one finding per call expression."""

    code = "EMA001"
    name = "test-every-call"
    severity = Severity.ERROR
    summary = "test rule"
    triggers = ("(",)

    def visit_Call(self, node: cst.Call) -> None:
        self.report(node, "call")


class KillsWorkerOnMarker(ReportsEveryCall):
    """Test-only rule that crashes its process on a marked file, as a native parser bug would."""

    def visit_Module(self, node: cst.Module) -> None:
        if "CRASH_HERE" in node.code:
            os.kill(os.getpid(), signal.SIGKILL)


def _tree(tmp_path: Path, count: int) -> list[SourceFile]:
    files = []
    for i in range(count):
        path = tmp_path / f"m{i:03}.py"
        path.write_text("f(1)\n" * (i % 3 + 1))
        files.append(SourceFile(str(path), str(tmp_path)))
    return files


def _summary(report) -> list[tuple]:
    return [(os.path.basename(d.path), d.start.line, d.code) for d in report.diagnostics]


def test_parallel_equals_serial(tmp_path: Path) -> None:
    files = _tree(tmp_path, 40)
    serial = check_files(files, [ReportsEveryCall], jobs=1)
    parallel = check_files(files, [ReportsEveryCall], jobs=2)
    assert _summary(serial) == _summary(parallel)
    assert len(serial.diagnostics) == sum(i % 3 + 1 for i in range(40))


def test_a_crashing_worker_costs_one_file_a_diagnostic(tmp_path: Path) -> None:
    files = _tree(tmp_path, 12)
    Path(files[5].path).write_text("CRASH_HERE = g(1)\n")
    report = check_files(files, [KillsWorkerOnMarker], jobs=2)
    crashed = [d for d in report.diagnostics if d.path == files[5].path]
    assert [(d.code, d.message) for d in crashed] == [
        ("EMA005", "internal error: the checker process died (killed by SIGKILL)")
    ]
    others = [d for d in report.diagnostics if d.path != files[5].path]
    assert len(others) == sum(i % 3 + 1 for i in range(12) if i != 5)


# a process-wide lock, as the import lock or a logging handler's would be
HELD_BY_ANOTHER_THREAD = threading.Lock()


class TakesAProcessWideLock(ReportsEveryCall):
    def visit_Module(self, node: cst.Module) -> None:
        with HELD_BY_ANOTHER_THREAD:
            pass


def test_a_lock_another_thread_holds_cannot_hang_the_workers(tmp_path: Path) -> None:
    """A forked child inherits every lock held at the fork, and no thread is left to release
    it: in a process with other threads (a test runner or notebook that imported torch)
    the workers must start from a fresh process instead."""
    files = _tree(tmp_path, 12)
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with HELD_BY_ANOTHER_THREAD:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    outcome = []
    try:
        held.wait()
        checker = threading.Thread(
            target=lambda: outcome.append(check_files(files, [TakesAProcessWideLock], jobs=2)), daemon=True
        )
        checker.start()
        checker.join(timeout=120)
    finally:
        release.set()
        holder.join()
    assert outcome, "the workers hung on a lock held by another thread of the parent"
    assert _summary(outcome[0]) == _summary(check_files(files, [ReportsEveryCall], jobs=1))


def test_workers_started_afresh_find_what_one_process_finds(monkeypatch) -> None:
    """Workers from a forkserver get the project index by pickle, not by inheritance: every
    rule must find the same on the fixtures as in one process (cross-file facts included)."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    files = [SourceFile(str(p), str(fixtures)) for p in sorted(fixtures.rglob("*.py"))]
    rules = enabled_rules(["EMA"], [])
    in_one_process = check_files(files, rules, jobs=1)
    monkeypatch.setattr(worker_processes, "_runs_one_thread", lambda: False)
    assert worker_processes.worker_context().get_start_method() != "fork"
    afresh = check_files(files, rules, jobs=2)
    assert _summary(afresh) == _summary(in_one_process)
    assert not [d for d in afresh.diagnostics if d.code == "EMA005"]


def test_the_command_line_forks_its_workers_and_finds_what_one_process_finds() -> None:
    """In-process tests run beside pytest's threads (forkserver); the command line runs one
    thread and forks, and must find the same."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    probe = "from ema_lint.worker_processes import worker_context; print(worker_context().get_start_method())"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "fork\n"
    outputs = [
        subprocess.run(
            [sys.executable, "-m", "ema_lint", "check", "--no-cache", "--output-format", "concise", "-j", jobs, str(fixtures)],
            capture_output=True,
            text=True,
        )
        for jobs in ("1", "2")
    ]
    assert outputs[0].stdout == outputs[1].stdout and outputs[0].stdout.count("EMA") > 100


def test_rule_exception_is_an_internal_error_diagnostic(tmp_path: Path) -> None:
    class Raises(ReportsEveryCall):
        def visit_Call(self, node: cst.Call) -> None:
            raise RuntimeError("boom")

    files = _tree(tmp_path, 1)
    report = check_files(files, [Raises], jobs=1)
    assert [(d.code, d.message) for d in report.diagnostics] == [("EMA005", "internal error: RuntimeError: boom")]


def test_cache_serves_unchanged_files_and_rechecks_changed_ones(tmp_path: Path, monkeypatch) -> None:
    files = _tree(tmp_path, 6)
    cache_dir = str(tmp_path / "cache")
    first = check_files(files, [ReportsEveryCall], cache=ResultCache(cache_dir, "k"))

    import ema_lint.runner as runner

    calls = []
    original = runner.check_source
    monkeypatch.setattr(runner, "check_source", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    second = check_files(files, [ReportsEveryCall], cache=ResultCache(cache_dir, "k"))
    assert calls == [] and _summary(second) == _summary(first)

    Path(files[2].path).write_text("f(1)\nf(2)\nf(3)\nf(4)\n")
    third = check_files(files, [ReportsEveryCall], cache=ResultCache(cache_dir, "k"))
    assert calls == [files[2].path]
    assert len(third.diagnostics) == len(first.diagnostics) - 3 + 4

    other_settings = check_files(files, [ReportsEveryCall], cache=ResultCache(cache_dir, "other"))
    assert len(calls) == 1 + len(files) and _summary(other_settings) == _summary(third)


_BLOCK = """\
import torch.nn as nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.{norm}(8)

    def forward(self, x):
        return self.norm(x)
"""
_NET = """\
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from pkg.blocks import Block

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()

    def forward(self, x):
        return checkpoint(self.block, x, use_reentrant=False)
"""


def test_cache_rechecks_a_file_when_a_class_it_reached_in_another_file_changes(tmp_path: Path, monkeypatch) -> None:
    """The edit leaves every phase-1 fact of `blocks.py` as it was; the finding in `net.py`
    came from `Block`'s class facts, which the index extracted on demand, so it must go."""
    from ema_lint.registry import rule_for

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "blocks.py").write_text(_BLOCK.format(norm="BatchNorm2d"))
    (package / "net.py").write_text(_NET)
    (package / "other.py").write_text("x = 1\n")
    files = [SourceFile(str(package / name), str(tmp_path)) for name in ("blocks.py", "net.py", "other.py")]
    rules = [rule_for("EMA101")]
    cache_dir = str(tmp_path / "cache")

    first = check_files(files, rules, cache=ResultCache(cache_dir, "k"))
    assert [(Path(d.path).name, d.code, d.start.line) for d in first.diagnostics] == [("net.py", "EMA101", 11)]

    import ema_lint.runner as runner

    calls = []
    original = runner.check_source
    monkeypatch.setattr(runner, "check_source", lambda *a, **k: calls.append(Path(a[0]).name) or original(*a, **k))
    (package / "blocks.py").write_text(_BLOCK.format(norm="LayerNorm"))
    second = check_files(files, rules, cache=ResultCache(cache_dir, "k"))
    assert second.diagnostics == []
    # `blocks.py` changed too, but no checkpoint call in it: settled without the rules
    assert calls == ["net.py"]


def test_scripts_with_the_same_module_name_are_judged_each_on_its_own(tmp_path: Path) -> None:
    """`a/train.py` and `b/train.py` (no packages) are both module `train`; the clean one
    must not stand in for the other."""
    from ema_lint.registry import SOURCE_RULES

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "train.py").write_text(_NET.replace("from pkg.blocks import Block\n", "").replace(
        "self.block = Block()", "self.block = nn.BatchNorm1d(4)"
    ))
    (tmp_path / "b" / "train.py").write_text("x = 1\n")
    files = [SourceFile(str(tmp_path / d / "train.py"), str(tmp_path / d)) for d in ("a", "b")]
    report = check_files(files, SOURCE_RULES)
    assert [(Path(d.path).parent.name, d.code) for d in report.diagnostics] == [("a", "EMA101")]


ORPHANING_SCRIPT = """
import multiprocessing, os, pathlib, sys, time
from ema_lint.worker_processes import map_isolated, worker_context


def slow(item):
    (pathlib.Path(sys.argv[2]) / str(os.getpid())).touch()
    time.sleep(120)
    return item


if __name__ == "__main__":
    context = worker_context() if sys.argv[1] == "default" else multiprocessing.get_context(sys.argv[1])
    results = map_isolated(slow, list(range(8)), jobs=2, context=context, died=lambda i, c: None,
                           run_alone=lambda i: False)
    next(results)
"""


def _running(pid: int) -> bool:
    # a worker orphaned to a container's init may stay a zombie: it has exited all the same
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("start_method", ["default", "forkserver"])
def test_workers_exit_when_the_run_is_killed(tmp_path: Path, start_method: str) -> None:
    """SIGKILL gives the run no chance to stop its pool; its workers must not run on."""
    script, started = tmp_path / "orphaning.py", tmp_path / "started"
    script.write_text(ORPHANING_SCRIPT)
    started.mkdir()
    run = subprocess.Popen([sys.executable, str(script), start_method, str(started)])
    try:
        deadline = time.monotonic() + 60
        while len(list(started.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [int(p.name) for p in started.iterdir()]
        assert len(workers) >= 2
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + 10
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [w for w in workers if _running(w)]
    for worker in alive:
        os.kill(worker, signal.SIGKILL)
    assert alive == []


def test_a_file_that_cannot_be_sent_to_a_worker_costs_only_itself(tmp_path: Path, monkeypatch) -> None:
    """A caller's `keep` lambda cannot be pickled for a fresh worker: the deep file that must
    run alone gets an EMA005, the API does not raise, and the other file is fixed in place."""
    from ema_lint.fix_run import fix_files

    monkeypatch.setattr(worker_processes, "worker_context", lambda: multiprocessing.get_context("spawn"))
    monkeypatch.setattr("ema_lint.fix_run.worker_context", lambda: multiprocessing.get_context("spawn"))
    deep = tmp_path / "deep.py"
    deep.write_text("import torch\nloss.backward()\nx = " + " and ".join(["a"] * 15000) + "\n")
    plain = tmp_path / "plain.py"
    plain.write_text(
        "total = 0.0\nfor b in loader:\n    loss = model(b)\n    loss.backward()\n    optimizer.step()\n    total += loss\n"
    )
    files = [SourceFile(str(deep), str(tmp_path)), SourceFile(str(plain), str(tmp_path))]
    outcomes = fix_files(files, SOURCE_RULES, jobs=1, keep=lambda found: list(found))
    assert [d.code for d in outcomes[0].remaining] == ["EMA005"]
    assert "could not start" in outcomes[0].remaining[0].message
    assert "loss.detach()" in outcomes[1].fixed.decode()
