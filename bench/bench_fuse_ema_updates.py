"""The momentum update of a MoCo-like model before and after `FuseEmaUpdatesPass`.

Usage: python bench/bench_fuse_ema_updates.py [--tensors 100] [--width 64] [--repeats 200] [--device cpu|cuda]

The key encoder follows the query encoder (`--tensors` parameters: Linear layers, weight and
bias each) in a `@torch.no_grad()` method called from forward. Timed, for each loop spelling:
- eager: the model as written (the Python loop);
- traced: the GraphModule before fusion (the loop unrolled, one node per op);
- fused: `ema_lint.transform(model).model` (one `foreach_*` call).
The forward does the update only, so the times are the update step. Variants run in
interleaved rounds and the fastest round of each is reported: background load only adds time.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import ema_lint
from ema_lint.passes import trace


class MomentumUpdate(nn.Module):
    def __init__(self, tensors: int, width: int, form: str, momentum: float = 0.999) -> None:
        super().__init__()
        self.encoder_q = nn.Sequential(*[nn.Linear(width, width) for _ in range(tensors // 2)])
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
        self.m = momentum
        self.form = form

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        for param_k, param_q in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            if self.form == "mul_add":
                param_k.mul_(self.m).add_(param_q, alpha=1 - self.m)
            elif self.form == "assign_data":
                param_k.data = param_k.data * self.m + param_q.data * (1.0 - self.m)
            else:
                param_k.lerp_(param_q, 1 - self.m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._momentum_update_key_encoder()
        return x


def fastest(variants: dict, repeats: int, rounds: int, device: str) -> dict[str, float]:
    x = torch.zeros(1, device=device)
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, model in variants.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], (time.perf_counter() - start) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.device}, threads {torch.get_num_threads()}, "
          f"{args.tensors} tensors of Linear({args.width}, {args.width}), fastest of {args.rounds} rounds")
    print(f"{'loop body':<12} {'eager us':>9} {'traced us':>10} {'fused us':>9} {'eager/fused':>12}")
    for form in ("mul_add", "assign_data", "lerp"):
        model = MomentumUpdate(args.tensors, args.width, form).to(args.device)
        fused = ema_lint.transform(model).model
        assert isinstance(fused, torch.fx.GraphModule), "the update was not fused"
        variants = {"eager": model, "traced": trace(copy.deepcopy(model)).graph_module, "fused": fused}
        best = fastest(variants, args.repeats, args.rounds, args.device)
        print(f"{form:<12} {best['eager'] * 1e6:>9.1f} {best['traced'] * 1e6:>10.1f} "
              f"{best['fused'] * 1e6:>9.1f} {best['eager'] / best['fused']:>11.1f}x")


if __name__ == "__main__":
    main()
