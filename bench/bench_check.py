"""Time `ema-lint check` over real third-party sources against `ruff check --select ALL` on the
same tree, in one run. Needs ruff on PATH (`pip install ruff`).

    python bench/bench_check.py [--repeat 3]

Prints files, lines, wall seconds and files/s for: ema-lint cold (no cache), ema-lint warm (cache
filled by the previous run), ruff cold (--no-cache) and ruff warm, and the ratios the project
holds itself to: cold ema-lint within 3x ruff cold, warm ema-lint faster than ruff cold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import corpus_root, count_lines, python_files  # noqa: E402


def _wall(command: list[str], cwd: Path, repeat: int, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        start = time.perf_counter()
        completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if completed.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stderr[-2000:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    ruff = shutil.which("ruff")
    if ruff is None:
        raise SystemExit("ruff is not on PATH: pip install ruff")
    ema_lint = shutil.which("ema-lint", path=os.path.dirname(sys.executable)) or shutil.which("ema-lint")
    source = corpus_root()
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "corpus"
        shutil.copytree(source, tree)
        # An empty config stops both tools from reading settings outside the tree.
        (tree / "pyproject.toml").write_text("[tool.ema-lint]\n\n[tool.ruff]\n")
        files = python_files(tree)
        lines = count_lines(files)
        cache = Path(scratch) / "cache"

        def drop_cache() -> None:
            shutil.rmtree(cache, ignore_errors=True)

        check = [ema_lint, "check", "--quiet", "--output-format", "concise", "--cache-dir", str(cache), "."]
        cold = _wall(check, tree, args.repeat, before=drop_cache)
        subprocess.run(check, cwd=tree, capture_output=True)
        warm = _wall(check, tree, args.repeat)
        findings = subprocess.run(check, cwd=tree, capture_output=True, text=True).stdout.count("\n")
        ruff_cmd = [ruff, "check", "--select", "ALL", "--exit-zero", "--quiet", "."]
        ruff_cold = _wall([*ruff_cmd, "--no-cache"], tree, args.repeat)
        subprocess.run(ruff_cmd, cwd=tree, capture_output=True)
        ruff_warm = _wall(ruff_cmd, tree, args.repeat)

    print(f"corpus: {', '.join(p.name for p in sorted(source.iterdir()))}: {len(files)} files, {lines} lines; "
          f"{os.cpu_count()} CPUs; median of {args.repeat}")
    print(f"{'run':<22}{'seconds':>9}{'files/s':>10}")
    for label, seconds in (
        ("ema-lint cold", cold),
        ("ema-lint warm (cache)", warm),
        ("ruff ALL cold", ruff_cold),
        ("ruff ALL warm (cache)", ruff_warm),
    ):
        print(f"{label:<22}{seconds:>9.2f}{len(files) / seconds:>10.0f}")
    print(f"ema-lint findings: {findings}")
    print(f"cold ema-lint / cold ruff = {cold / ruff_cold:.2f}x (target <= 3x)")
    print(f"warm ema-lint / cold ruff = {warm / ruff_cold:.2f}x (target < 1x)")


if __name__ == "__main__":
    main()
