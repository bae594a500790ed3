"""EMA101 batchnorm-in-checkpoint, found in a traced model.

## What it does
Finds running-stat modules (BatchNorm of any dimension, SyncBatchNorm, lazy BatchNorm,
`_BatchNorm` subclasses, InstanceNorm with `track_running_stats=True`) called inside an
activation-checkpoint region that backward recomputes.

## Why is this bad?
Recomputation runs the module's forward a second time in training mode, so `running_mean`,
`running_var` and `num_batches_tracked` are updated twice per step: the statistics drift
from what an un-checkpointed model would hold, silently.

## Fix safety
`ema_lint.transform(model)` substitutes `ema_lint.runtime.convert_running_stats`, which
updates once per step: same values and gradients (safe).
"""

from __future__ import annotations

from ema_lint.diagnostics import Applicability, Diagnostic, Fix
from ema_lint.passes.findings import in_recomputed_region, module_diagnostic
from ema_lint.passes.recompute_safety import is_recompute_safe
from ema_lint.passes.tracer import REGIONS_META, Trace, is_running_stat_module

FIX = Fix("Make running-stat modules update once per step with `ema_lint.transform`", Applicability.SAFE)


def find_running_stats_in_checkpoint(trace: Trace) -> list[Diagnostic]:
    diagnostics: dict[str, Diagnostic] = {}
    for node in trace.graph.nodes:
        if node.op != "call_module" or node.target in diagnostics or not in_recomputed_region(node):
            continue
        name = str(node.target)
        module = trace.root.get_submodule(name)
        # In eval mode the statistics are only read, recomputed or not.
        if not is_running_stat_module(module) or not module.training:
            continue
        regions = [trace.regions[i] for i in node.meta[REGIONS_META]]
        if is_recompute_safe(module, regions):
            continue
        message = (
            f"`{name}` ({type(module).__name__}) updates its running statistics again when "
            "checkpoint recomputes it in backward"
        )
        origin = regions[-1].origin
        notes = (f"recomputed by the checkpoint at {origin}",) if origin else ()
        diagnostics[name] = module_diagnostic("EMA101", message, trace.root, name, FIX, notes)
    return list(diagnostics.values())
