"""EMA103 stateful-module-in-checkpoint, found in a traced model.

## What it does
Finds modules other than running-stat ones whose forward writes their buffers (power
iteration of `spectral_norm`, EMA buffers updated in forward) inside an activation-checkpoint
region that backward recomputes. A write is seen either in the graph (an in-place op or an
assignment on a buffer) or, for modules traced as leaves, as a forward hook or
parametrization on a module that owns buffers.

## Why is this bad?
Recomputation replays the forward, so the buffers are written twice per step and the
recomputed forward reads state the first forward already advanced.

## Fix safety
`transform` applies `ema_lint.runtime.replay_on_recompute` to the module: recomputation runs
from the buffers the real forward started with and leaves those it left. Unsafe: exact when
the module runs once per step; a module called several times needs
`context_fn=ema_lint.runtime.replay_buffers` at its checkpoint call site.
"""

from __future__ import annotations

import torch

from ema_lint.diagnostics import Applicability, Diagnostic, Fix
from ema_lint.passes.findings import in_recomputed_region, module_diagnostic, owner_of, state_writes
from ema_lint.passes.tracer import Trace, is_running_stat_module

FIX = Fix("Replay the module's buffers when checkpoint recomputes it", Applicability.UNSAFE)


def stateful_modules_in_checkpoint(trace: Trace) -> dict[str, torch.nn.Module]:
    """Qualified name -> module, for the non-running-stat modules that write buffers inside a
    recomputed region, in graph order."""
    found: dict[str, torch.nn.Module] = {}
    root = trace.root
    for node in trace.graph.nodes:
        if node.op == "call_module" and in_recomputed_region(node):
            module = root.get_submodule(str(node.target))
            if not is_running_stat_module(module) and _writes_buffers_invisibly(module):
                found.setdefault(str(node.target), module)
    for node, attribute in state_writes(trace.graph):
        if in_recomputed_region(node):
            owner, _ = owner_of(attribute)
            module = root.get_submodule(owner)
            if not is_running_stat_module(module):
                found.setdefault(owner, module)
    return found


def find_stateful_modules_in_checkpoint(trace: Trace) -> list[Diagnostic]:
    return [
        module_diagnostic(
            "EMA103",
            f"`{name or type(module).__name__}` ({type(module).__name__}) writes its buffers in forward, "
            "so checkpoint recomputation writes them again in backward",
            module,
            name,
            FIX,
        )
        for name, module in stateful_modules_in_checkpoint(trace).items()
    ]


def _writes_buffers_invisibly(module: torch.nn.Module) -> bool:
    """A leaf whose hooks or parametrizations may write buffers the graph cannot show."""
    owns_buffers = any(True for _ in module.buffers())
    has_hooks = bool(module._forward_pre_hooks) or bool(module._forward_hooks)
    parametrized = hasattr(module, "parametrizations")
    return owns_buffers and (has_hooks or parametrized)
