"""Round trip of `ema-lint fix --write --unsafe-fixes` over real third-party sources.

For each corpus (timm, torchvision, transformers at the versions pinned in bench/corpus.py,
unpacked whole from wheels fetched once into bench/_corpus), unpack the package into a temporary
folder, fix it with every rule and unsafe fixes on, then assert:
  - every file the fixer did not change is byte-identical to the original (all files, not
    only Python), with the same mode;
  - every changed file compiles and keeps its mode;
  - a second `fix --write --unsafe-fixes` changes nothing.
Prints the numbers. Too slow for every CI run; run by hand:

    python bench/bench_fix_roundtrip.py [--jobs N] [--corpus timm --corpus torchvision ...]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import stat
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import unpack  # noqa: E402

from ema_lint.fix_run import fix_files
from ema_lint.workspace import Workspace

def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    files[os.path.relpath(path, root)] = (handle.read(), stat.S_IMODE(os.stat(path).st_mode))
    return files


def run_fix(root: Path, jobs: int):
    workspace = Workspace.open([str(root)], config_path=None)
    outcomes = fix_files(workspace.files, workspace.rules, unsafe=True, write=True, keep=workspace.keep, jobs=jobs)
    return workspace, outcomes


def round_trip(name: str, package: Path, jobs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"ema-lint-{name}-") as temporary:
        root = Path(temporary) / name
        shutil.copytree(package, root, ignore=shutil.ignore_patterns("__pycache__"))
        before = snapshot(root)
        started = time.perf_counter()
        workspace, outcomes = run_fix(root, jobs)
        first_seconds = time.perf_counter() - started
        after = snapshot(root)

        assert set(after) == set(before), "files appeared or vanished"
        touched = sorted(path for path in before if after[path][0] != before[path][0])
        for path in before:
            assert after[path][1] == before[path][1], f"mode changed: {path}"
        written = {os.path.relpath(o.path, root) for o in outcomes if o.written}
        assert set(touched) == written, f"changed without being reported: {set(touched) ^ written}"
        for path in touched:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile(after[path][0], path, "exec", dont_inherit=True)

        started = time.perf_counter()
        _, second = run_fix(root, jobs)
        second_seconds = time.perf_counter() - started
        assert snapshot(root) == after, "the second run changed files"
        assert not any(o.applied for o in second), "the second run applied fixes"

        applied = collections.Counter()
        for outcome in outcomes:
            applied.update(outcome.applied)
        remaining = collections.Counter(d.code for o in outcomes for d in o.remaining)
        errors = [(os.path.relpath(o.path, root), o.error) for o in outcomes if o.error]
        return {
            "corpus": name,
            "files": len(before),
            "python_files": len(workspace.files),
            "touched": len(touched),
            "untouched_identical": len(before) - len(touched),
            "applied": dict(sorted(applied.items())),
            "remaining": dict(sorted(remaining.items())),
            "errors": errors,
            "first_run_s": round(first_seconds, 1),
            "second_run_s": round(second_seconds, 1),
            "rules": [rule.code for rule in workspace.rules],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--corpus", action="append", choices=["timm", "torchvision", "transformers"])
    arguments = parser.parse_args()
    chosen = arguments.corpus or ["timm", "torchvision", "transformers"]
    with tempfile.TemporaryDirectory(prefix="ema-lint-wheels-") as unpacked:
        for name in chosen:
            result = round_trip(name, unpack(name, Path(unpacked)), arguments.jobs)
            print(
                f"{result['corpus']}: {result['python_files']} Python files ({result['files']} files), "
                f"{result['touched']} touched (all compile), {result['untouched_identical']} byte-identical; "
                f"fixes applied {result['applied'] or 'none'}; remaining {result['remaining'] or 'none'}; "
                f"errors {len(result['errors'])}; second run: no change; "
                f"{result['first_run_s']} s + {result['second_run_s']} s with {arguments.jobs} jobs; "
                f"rules {','.join(result['rules']) or 'none'}",
                flush=True,
            )
            for path, error in result["errors"]:
                print(f"  error: {path}: {error}")


if __name__ == "__main__":
    main()
