"""Analysis time per model (`ema_lint.check_model`) against `torch.export` on the same model,
and the audit's overhead over plain training steps, in one run.

    .venv/bin/python bench/bench_model_analysis.py [--repeat 5] [--export-repeat 2] [--models timm-resnet50 ...]

Analysis time is the median of `--repeat` runs; export time the fastest of `--export-repeat`.

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


def _export_seconds(model: torch.nn.Module, repeat: int) -> tuple[float, str]:
    """The fastest of `repeat` exports: later exports of a model reuse torch's warm caches,
    which only favours export in the comparison."""
    times = []
    outcome = "ok"
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            torch.export.export(copy.deepcopy(model), INPUTS, strict=False)
        except Exception as error:  # export's failure is a result to report, not a crash
            outcome = f"failed: {type(error).__name__}"
        times.append(time.perf_counter() - start)
    return min(times), outcome


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--export-repeat", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=sorted(CASES))
    arguments = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'model':42} {'analysis s':>10} {'export s':>9} {'speedup':>8} {'2 steps s':>9} {'audit s':>8} {'overhead':>8}  export"
    print(header)
    for name in arguments.models:
        model, _ = CASES[name].build()
        model.train()
        analysis = _seconds(lambda: ema_lint.check_model(model), arguments.repeat)
        export, outcome = _export_seconds(model, arguments.export_repeat)
        step = default_step(INPUTS)
        plain_copy, audited_copy = copy.deepcopy(model), copy.deepcopy(model)
        plain = _seconds(lambda: [step(plain_copy) for _ in range(2)], 1)
        audited = _seconds(lambda: ema_lint.audit(audited_copy, step, steps=2), 1)
        print(
            f"{name:42} {analysis:10.3f} {export:9.2f} {export / analysis:7.0f}x "
            f"{plain:9.2f} {audited:8.2f} {audited / plain:7.1f}x  {outcome}",
            flush=True,
        )


if __name__ == "__main__":
    main()
