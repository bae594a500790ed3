"""Crash hunt: `ema-lint check` over whole real trees that nobody wrote for it.

By default the running interpreter's standard library and its site-packages (torch, timm,
transformers and the rest of the set-up), each as one `check --no-cache --exit-zero` run of the
command line, in a process of its own so that its peak memory is its own. For each tree it
prints the files checked, the findings, the EMA005 count (the checker failed on a file) with
each EMA005 message, the exit code (anything but 0 is a failed run) and the peak RSS of the
largest process (the main one or a worker). Target: 0 EMA005 and 0 failed runs, with RSS
bounded. Too slow for every CI run; run by hand:

    python bench/crash_hunt.py [--jobs N] [PATH ...]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import sysconfig
import time

# Run in a child: RUSAGE_CHILDREN then holds the peak RSS of this tree's processes only.
MEASURED_RUN = """
import resource, subprocess, sys
run = subprocess.run(sys.argv[1:], capture_output=True)
sys.stdout.buffer.write(run.stdout)
sys.stderr.buffer.write(run.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(run.returncode)
"""


def hunt(path: str, jobs: int) -> dict:
    command = [sys.executable, "-m", "ema_lint", "check", "--no-cache", "--exit-zero", "--output-format", "json"]
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", MEASURED_RUN, *command, "-j", str(jobs), path], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    *errors, peak_kib = run.stderr.splitlines() or ["0"]
    try:
        findings = json.loads(run.stdout)
    except json.JSONDecodeError:
        findings = []
    return {
        "path": path,
        "files": _files_checked(path),
        "exit": run.returncode,
        "wall": wall,
        "peak_mib": int(peak_kib) / 1024,
        "codes": collections.Counter(f["code"] for f in findings),
        "crashes": [f"{f['filename']}:{f['location']['row']}: {f['message']}" for f in findings if f["code"] == "EMA005"],
        "stderr": errors,
    }


def _files_checked(path: str) -> int:
    from ema_lint.workspace import Workspace

    return len(Workspace.open([path]).files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="trees to check (default: the stdlib and site-packages)")
    parser.add_argument("--jobs", type=int, default=2)
    arguments = parser.parse_args()
    paths = arguments.paths or [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]
    failed = 0
    for path in paths:
        result = hunt(path, arguments.jobs)
        findings = sum(result["codes"].values())
        print(
            f"{result['path']}: {result['files']} files, {findings} findings, "
            f"{result['codes']['EMA005']} EMA005, exit {result['exit']}, "
            f"{result['wall']:.0f} s, peak RSS {result['peak_mib']:.0f} MiB"
        )
        print("  by code: " + ", ".join(f"{code} {n}" for code, n in sorted(result["codes"].items())))
        for crash in result["crashes"]:
            print(f"  EMA005 {crash}")
        if result["exit"] != 0:
            print("  stderr: " + "\n  ".join(result["stderr"][-20:]))
        failed += result["exit"] != 0 or result["codes"]["EMA005"] > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
