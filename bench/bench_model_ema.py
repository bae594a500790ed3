"""Fused model EMA vs the Python loop over parameters, measured as ratios in one run.

Usage: python bench/bench_model_ema.py [--device cpu|cuda] [--repeats N] [--threads N]

Two workloads: 25M parameters in 160 tensors (80 `Linear(560, 560)`) and 2,000 small tensors
(1,000 `Linear(16, 16)`), each at two levels:
- tensor lists: the update alone, on lists collected once (`foreach_ema_update` vs a loop);
- model: a whole `ModelEMA.update(model)` vs a loop over `zip(ema.parameters(), model.parameters())`,
  both walking the modules on every update as a training loop does.
Variants are timed in interleaved rounds and the fastest round of each is reported (as
`timeit` advises): on a shared machine, background load only ever adds time.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from ema_lint.runtime import ModelEMA, foreach_ema_update

DECAY = 0.999
BASELINE = "loop ema.mul_(d).add_(p, alpha=1-d)"
FUSED_LERP = "fused, lerp (ModelEMA default)"
FUSED_EXACT = "fused, exact=True (mul+add)"


def large_model():
    return nn.Sequential(*[nn.Linear(560, 560) for _ in range(80)])


def small_tensor_model():
    return nn.Sequential(*[nn.Linear(16, 16) for _ in range(1000)])


def list_variants(model):
    params = list(model.parameters())
    emas = [p.detach().clone() for p in params]

    def loop_mul_add():
        for ema, param in zip(emas, params):
            ema.mul_(DECAY).add_(param, alpha=1 - DECAY)

    def loop_lerp():
        for ema, param in zip(emas, params):
            ema.lerp_(param, 1 - DECAY)

    def loop_out_of_place():  # the timm ModelEmaV2 form
        for ema, param in zip(emas, params):
            ema.copy_(DECAY * ema + (1 - DECAY) * param)

    return {
        BASELINE: loop_mul_add,
        "loop ema.lerp_(p, 1-d)": loop_lerp,
        "loop ema.copy_(d*ema + (1-d)*p)": loop_out_of_place,
        FUSED_LERP: lambda: foreach_ema_update(emas, params, DECAY, exact=False),
        FUSED_EXACT: lambda: foreach_ema_update(emas, params, DECAY, exact=True),
    }


def model_variants(model):
    ema_model = copy.deepcopy(model).requires_grad_(False)
    fused = ModelEMA(model, decay=DECAY)
    fused_exact = ModelEMA(model, decay=DECAY, exact=True)

    def loop_mul_add():
        for ema, param in zip(ema_model.parameters(), model.parameters()):
            ema.mul_(DECAY).add_(param, alpha=1 - DECAY)

    def loop_lerp():
        for ema, param in zip(ema_model.parameters(), model.parameters()):
            ema.lerp_(param, 1 - DECAY)

    return {
        BASELINE: loop_mul_add,
        "loop ema.lerp_(p, 1-d)": loop_lerp,
        FUSED_LERP: lambda: fused.update(model),
        FUSED_EXACT: lambda: fused_exact.update(model),
    }


def measure(runs, device, repeats, inner):
    times = {name: [] for name in runs}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(repeats):
            for name, fn in runs.items():
                sync()
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                sync()
                times[name].append((time.perf_counter() - start) / inner)
    return {name: min(samples) for name, samples in times.items()}


def report(title, medians):
    print(f"\n{title}")
    print(f"  {'variant':34s} {'ms/update':>10s} {'speed-up vs mul_/add_ loop':>28s}")
    for name, seconds in medians.items():
        print(f"  {name:34s} {seconds * 1e3:10.3f} {medians[BASELINE] / seconds:27.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads")
    results = {}
    for workload, build, inner in (("25M/160 tensors", large_model, 2), ("2,000 small tensors", small_tensor_model, 5)):
        model = build().to(args.device)
        for level, variants in (("tensor lists", list_variants), ("model", model_variants)):
            medians = measure(variants(model), args.device, args.repeats, inner)
            report(f"{workload}, {level}", medians)
            results[workload, level] = medians
    print(f"\nratios ({BASELINE} time / fused time):")
    for (workload, level), medians in results.items():
        print(
            f"  {workload:20s} {level:12s} lerp {medians[BASELINE] / medians[FUSED_LERP]:6.2f}x"
            f"   exact {medians[BASELINE] / medians[FUSED_EXACT]:6.2f}x"
        )
    print("targets: >= 1.5x on 25M/160 tensors, >= 8x on 2,000 small tensors")


if __name__ == "__main__":
    main()
