"""Checkpoint-safe and fused modules that fixes and graph passes substitute in. Imports only torch."""

from ema_lint.runtime.running_stats import (
    convert_running_stats,
    recompute_aware,
    running_stats_context_fn,
)

__all__ = [
    "convert_running_stats",
    "recompute_aware",
    "running_stats_context_fn",
]
