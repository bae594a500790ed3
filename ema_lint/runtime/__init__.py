"""Checkpoint-safe and fused modules that fixes and graph passes substitute in. Imports only torch."""

from ema_lint.runtime.model_ema import ModelEMA, foreach_ema_update
from ema_lint.runtime.running_stats import (
    convert_running_stats,
    recompute_aware,
    running_stats_context_fn,
)

__all__ = [
    "ModelEMA",
    "convert_running_stats",
    "foreach_ema_update",
    "recompute_aware",
    "running_stats_context_fn",
]
