"""Fused model EMA vs the Python loop over parameters, measured as ratios in one run.

Usage: python bench/bench_model_ema.py [--device cpu|cuda] [--repeats N] [--threads N]

Two workloads: 25M parameters in 160 tensors (80 `Linear(560, 560)`) and 2,000 small tensors
(1,000 `Linear(16, 16)`), each at two levels:
- tensor lists: the update alone, on lists collected once (`foreach_ema_update` vs a loop);
- model: a whole `ModelEMA.update(model)` vs a loop over `zip(ema.parameters(), model.parameters())`,
  both walking the modules on every update as a training loop does.
Baselines are the loops real projects write: the in-place `mul_`/`add_` loop (the fastest a Python
loop gets), BYOL/DINO's `mul_(d).add_((1-d) * p)`, MoCo's `ema.data = ema.data * d + p.data * (1-d)`
and timm `ModelEmaV2`'s `ema.copy_(ema * d + (1-d) * p)`. Two floors say what any update can reach
on the machine: one `_foreach_add_` pass (reads both tensors, writes one: the memory traffic an EMA
cannot avoid) and the bare `_foreach_lerp_` call without the dtype/device grouping that makes
`foreach_ema_update` safe on mixed lists.

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
DINO_LOOP = "loop ema.mul_(d).add_((1-d)*p)"
MOCO_LOOP = "loop ema.data = ema.data*d + p.data*(1-d)"
TIMM_V2_LOOP = "loop ema.copy_(ema*d + (1-d)*p)"
TRAFFIC_FLOOR = "floor: one _foreach_add_ pass"
CALL_FLOOR = "floor: bare _foreach_lerp_"
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

    def loop_dino():
        for ema, param in zip(emas, params):
            ema.mul_(DECAY).add_((1 - DECAY) * param)

    def loop_moco():
        for ema, param in zip(emas, params):
            ema.data = ema.data * DECAY + param.data * (1 - DECAY)

    def loop_timm_v2():
        for ema, param in zip(emas, params):
            ema.copy_(ema * DECAY + (1 - DECAY) * param)

    return {
        BASELINE: loop_mul_add,
        "loop ema.lerp_(p, 1-d)": loop_lerp,
        DINO_LOOP: loop_dino,
        MOCO_LOOP: loop_moco,
        TIMM_V2_LOOP: loop_timm_v2,
        FUSED_LERP: lambda: foreach_ema_update(emas, params, DECAY, exact=False),
        FUSED_EXACT: lambda: foreach_ema_update(emas, params, DECAY, exact=True),
        TRAFFIC_FLOOR: lambda: torch._foreach_add_(emas, params),
        CALL_FLOOR: lambda: torch._foreach_lerp_(emas, params, 1 - DECAY),
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
    print(f"  {'variant':42s} {'ms/update':>10s} {'speed-up vs mul_/add_ loop':>28s}")
    for name, seconds in medians.items():
        print(f"  {name:42s} {seconds * 1e3:10.3f} {medians[BASELINE] / seconds:27.2f}x")


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
    print("\nratios (loop time / fused lerp time; the last column is the most a single-pass update can reach):")
    print(f"  {'workload':20s} {'level':12s} {'mul_/add_':>10s} {'DINO':>7s} {'MoCo':>7s} {'timm V2':>8s} {'exact vs mul_/add_':>19s} {'ceiling':>8s}")
    for (workload, level), medians in results.items():
        fused = medians[FUSED_LERP]
        columns = [medians[BASELINE] / fused]
        columns += [medians[name] / fused if name in medians else float("nan") for name in (DINO_LOOP, MOCO_LOOP, TIMM_V2_LOOP)]
        columns.append(medians[BASELINE] / medians[FUSED_EXACT])
        floor = min(medians.get(TRAFFIC_FLOOR, float("inf")), medians.get(CALL_FLOOR, float("inf")))
        columns.append(medians[BASELINE] / floor if floor != float("inf") else float("nan"))
        print(f"  {workload:20s} {level:12s} " + " ".join(f"{c:{w}.2f}x" for c, w in zip(columns, (9, 6, 6, 7, 18, 7))))
    print("targets: >= 1.5x on 25M/160 tensors, >= 8x on 2,000 small tensors")


if __name__ == "__main__":
    main()
