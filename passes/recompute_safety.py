"""Whether a running-stat module in checkpoint regions is already protected from recomputation:
converted by `convert_running_stats`, or every region around it checkpoints with
`running_stats_context_fn` or runs a `recompute_aware` function."""

from __future__ import annotations

from typing import Sequence

import torch

from ema_lint.passes.tracer import CheckpointRegion
from ema_lint.runtime.running_stats import is_converted, recompute_aware, running_stats_context_fn

_RECOMPUTE_AWARE = f"{recompute_aware.__module__}.{recompute_aware.__qualname__}"


def is_recompute_safe(module: torch.nn.Module, regions: Sequence[CheckpointRegion]) -> bool:
    return is_converted(module) or any(_region_is_safe(region) for region in regions)


def _region_is_safe(region: CheckpointRegion) -> bool:
    return region.context_fn is running_stats_context_fn or region.function == _RECOMPUTE_AWARE
