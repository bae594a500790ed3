"""Peak memory of a differentiable EMA after T steps: every bounded mode vs the naive average.

Usage: python bench/bench_differentiable_ema.py [--steps 10 100 1000] [--naive-max 100]
       [--csv docs/differentiable_ema_memory.csv] [--png docs/differentiable_ema_memory.png]
       python bench/bench_differentiable_ema.py --plot-csv docs/differentiable_ema_memory.csv --png out.png

A MINE-style loop: each step a small critic scores a batch, the EMA of `exp(critic).mean()`
feeds the loss and `backward()` runs. The naive average `m = d * m + (1 - d) * sample` keeps
its history, so it needs `backward(retain_graph=True)` and its memory grows with T (and each
backward walks the whole history, so its time per step grows too; `--naive-max` caps its T).
Peak memory is the peak of live tensor storage allocated inside the loop (see
live_tensor_bytes.py): exact and independent of other processes.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from torch import nn

from ema_lint.runtime import DifferentiableEMA
from live_tensor_bytes import LiveTensorBytes

DECAY = 0.99
MODES = ("constant", "detach", "straight_through", "trace", "truncated", "naive")
HORIZON = 8


def run(mode: str, steps: int) -> tuple[int, float]:
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))
    ema = None
    if mode != "naive":
        jacobian_mode = mode in ("trace", "truncated")
        ema = DifferentiableEMA(
            DECAY,
            mode,
            parameters=critic.parameters() if jacobian_mode else None,
            horizon=HORIZON if mode == "truncated" else None,
        )
    batches = torch.randn(steps, 256, 8)
    average = torch.zeros(())
    start = time.perf_counter()
    with LiveTensorBytes() as tracker:
        for batch in batches:
            sample = critic(batch).exp().mean()
            if ema is None:
                average = DECAY * average + (1 - DECAY) * sample
                average.log().backward(retain_graph=True)
            else:
                out = ema(sample)
                if out.requires_grad:
                    out.log().backward()
    return tracker.peak, (time.perf_counter() - start) / steps


def write_png(path: Path, rows: list[dict]) -> None:
    """A log-log line chart drawn with Pillow (matplotlib is not a dependency)."""
    import math

    from PIL import Image, ImageDraw

    width, height, margin = 720, 440, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    xs = [math.log10(r["steps"]) for r in rows]
    ys = [math.log10(r["peak_bytes"]) for r in rows]
    x0, x1 = min(xs), max(xs)
    y0, y1 = math.floor(min(ys)), math.ceil(max(ys))

    def point(steps: int, nbytes: int) -> tuple[float, float]:
        x = margin + (math.log10(steps) - x0) / (x1 - x0) * (width - 2 * margin)
        y = height - margin - (math.log10(nbytes) - y0) / (y1 - y0) * (height - 2 * margin)
        return x, y

    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    for exponent in range(y0, y1 + 1):
        _, y = point(10 ** round(x0), 10**exponent)
        draw.line([margin - 5, y, margin, y], fill="black")
        draw.text((8, y - 6), f"{10**exponent / 1000:g} kB", fill="black")
    for steps in sorted({r["steps"] for r in rows}):
        x, _ = point(steps, 10**y0)
        draw.line([x, height - margin, x, height - margin + 5], fill="black")
        draw.text((x - 12, height - margin + 10), f"T={steps}", fill="black")
    colours = {
        "constant": "gray",
        "detach": "blue",
        "straight_through": "green",
        "trace": "purple",
        "truncated": "orange",
        "naive": "red",
    }
    for index, mode in enumerate(MODES):
        series = [point(r["steps"], r["peak_bytes"]) for r in rows if r["mode"] == mode]
        if len(series) > 1:
            draw.line(series, fill=colours[mode], width=3)
        for x, y in series:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colours[mode])
        draw.text((margin + 10, margin + 10 + 16 * index), mode, fill=colours[mode])
    draw.text(
        (margin + 10, height - margin - 20),
        "constant, detach and straight_through overlap; so do trace and truncated",
        fill="black",
    )
    draw.text((margin, 20), "Peak live tensor memory of a differentiable EMA after T steps (log-log)", fill="black")
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--naive-max", type=int, default=100)
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--plot-csv", type=Path, help="redraw --png from a CSV this script wrote; measure nothing")
    args = parser.parse_args()
    if args.plot_csv:
        with args.plot_csv.open() as handle:
            rows = [{**row, "steps": int(row["steps"]), "peak_bytes": int(row["peak_bytes"])} for row in csv.DictReader(handle)]
        write_png(args.png, rows)
        return
    print(f"torch {torch.__version__}; peak live tensor bytes allocated inside the loop")
    print("(ms/step includes the memory tracker's per-operator overhead; compare it across rows only)")
    print(f"  {'mode':18s} {'T':>6s} {'peak bytes':>12s} {'ms/step':>9s}")
    rows = []
    for mode in MODES:
        for steps in args.steps:
            if mode == "naive" and steps > args.naive_max:
                continue
            peak, seconds = run(mode, steps)
            rows.append({"mode": mode, "steps": steps, "peak_bytes": peak, "ms_per_step": round(seconds * 1e3, 3)})
            print(f"  {mode:18s} {steps:6d} {peak:12d} {seconds * 1e3:9.3f}")
    print("\npeak at the largest T / peak at the smallest T (bounded modes must be <= 1.05):")
    for mode in MODES:
        series = [r for r in rows if r["mode"] == mode]
        print(f"  {mode:18s} T={series[-1]['steps']}/T={series[0]['steps']}: "
              f"{series[-1]['peak_bytes'] / series[0]['peak_bytes']:.3f}")
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.png:
        write_png(args.png, rows)


if __name__ == "__main__":
    main()
