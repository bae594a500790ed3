"""Analysis time per model (`ema_lint.check_model`) against `torch.export` on the same model,
and the audit's overhead over plain training steps, in one run.

    .venv/bin/python bench/bench_model_analysis.py [--repeat 5] [--models timm-resnet50 ...]

Analysis time is the median of `--repeat` runs. Export is timed twice per model, after one
export of a tiny model has paid torch.export's one-time start-up: the first export of each
model (what a CI job pays) and the second (warm caches, export's best case).

Models are the real-model test cases (pretrained=False, input 2x3x32x32). Imports torchvision
through the test-only shim in tests/vision_models.py (this machine's torchvision build
cannot load its compiled ops).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "passes"))

from test_real_models import CASES, INPUTS  # noqa: E402

import ema_lint  # noqa: E402
from ema_lint.model import default_step  # noqa: E402


def _seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _export_seconds(model: torch.nn.Module) -> tuple[float, float, str]:
    """A model's first export and its second: the second reuses torch's caches warmed by the
    first, which only favours export in the comparison."""
    times = []
    outcome = "ok"
    for _ in range(2):
        start = time.perf_counter()
        try:
            torch.export.export(copy.deepcopy(model), INPUTS, strict=False)
        except Exception as error:  # export's failure is a result to report, not a crash
            outcome = f"failed: {type(error).__name__}"
        times.append(time.perf_counter() - start)
    return times[0], times[1], outcome


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=sorted(CASES))
    arguments = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),), strict=False)
    header = (
        f"{'model':42} {'analysis s':>10} {'export 1st s':>12} {'export 2nd s':>12} {'speedup':>13} "
        f"{'2 steps s':>9} {'audit s':>8} {'overhead':>8}  export"
    )
    print(header)
    for name in arguments.models:
        model, _ = CASES[name].build()
        model.train()
        analysis = _seconds(lambda: ema_lint.check_model(model), arguments.repeat)
        first, second, outcome = _export_seconds(model)
        step = default_step(INPUTS)
        plain_copy, audited_copy = copy.deepcopy(model), copy.deepcopy(model)
        plain = _seconds(lambda: [step(plain_copy) for _ in range(2)], 1)
        audited = _seconds(lambda: ema_lint.audit(audited_copy, step, steps=2), 1)
        speedup = f"{first / analysis:.0f}x / {second / analysis:.0f}x"
        print(
            f"{name:42} {analysis:10.3f} {first:12.2f} {second:12.2f} {speedup:>13} "
            f"{plain:9.2f} {audited:8.2f} {audited / plain:7.1f}x  {outcome}",
            flush=True,
        )


if __name__ == "__main__":
    main()
