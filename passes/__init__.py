"""torch.fx analyses and rewrite passes, installed as `ema_lint.passes`.

Analyses read a `Trace` and return diagnostics; rewrites are `PassBase` passes returning
`PassResult(graph_module, modified)`.
"""

from ema_lint.passes.audit import audit
from ema_lint.passes.detach_ema_history import DetachHistoryPass
from ema_lint.passes.find_ema_history import find_ema_history, history_keeping_attributes
from ema_lint.passes.find_ema_loop_updates import find_ema_loop_updates
from ema_lint.passes.find_running_stats_in_checkpoint import find_running_stats_in_checkpoint
from ema_lint.passes.find_stateful_modules_in_checkpoint import (
    find_stateful_modules_in_checkpoint,
    replay_targets,
    stateful_modules_in_checkpoint,
)
from ema_lint.passes.fuse_ema_updates import FuseEmaUpdatesPass
from ema_lint.passes.running_stats_once_per_step import RunningStatsOncePerStepPass
from ema_lint.passes.tracer import (
    CARRIES_GRAD_META,
    GRAD_ENABLED_META,
    REGIONS_META,
    CheckpointRegion,
    EmaTracer,
    Trace,
    trace,
)

# In the order `check_model` runs them.
ANALYSES = (
    find_running_stats_in_checkpoint,
    find_stateful_modules_in_checkpoint,
    find_ema_history,
    find_ema_loop_updates,
)

__all__ = [
    "ANALYSES",
    "CARRIES_GRAD_META",
    "GRAD_ENABLED_META",
    "REGIONS_META",
    "CheckpointRegion",
    "DetachHistoryPass",
    "EmaTracer",
    "FuseEmaUpdatesPass",
    "RunningStatsOncePerStepPass",
    "Trace",
    "audit",
    "find_ema_history",
    "find_ema_loop_updates",
    "find_running_stats_in_checkpoint",
    "find_stateful_modules_in_checkpoint",
    "history_keeping_attributes",
    "replay_targets",
    "stateful_modules_in_checkpoint",
    "trace",
]
