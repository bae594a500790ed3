"""Checkpoint-safe and fused modules that fixes and graph passes substitute in. Imports only torch."""

from ema_lint.runtime.differentiable_ema import DifferentiableEMA, ema_update
from ema_lint.runtime.history import detach_after_forward
from ema_lint.runtime.model_ema import ModelEMA, foreach_ema_update
from ema_lint.runtime.replay import replay_buffers, replay_on_recompute
from ema_lint.runtime.running_stats import (
    convert_running_stats,
    recompute_aware,
    running_stats_context_fn,
)

__all__ = [
    "DifferentiableEMA",
    "ModelEMA",
    "convert_running_stats",
    "detach_after_forward",
    "ema_update",
    "foreach_ema_update",
    "recompute_aware",
    "replay_buffers",
    "replay_on_recompute",
    "running_stats_context_fn",
]
