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
`transform` applies `ema_lint.runtime.replay_on_recompute` to the module whose forward the
checkpoint recomputes: recomputation runs from the buffers the real forward started with and
leaves those it left. Unsafe: exact when the module runs once per step. A write made by the
checkpointed function itself (`checkpoint(self._inner, x)`) reruns without any module forward,
so only `context_fn=ema_lint.runtime.replay_buffers` at the call site fixes it (display only).
"""

from __future__ import annotations

from typing import Iterator

import torch

from ema_lint.diagnostics import Applicability, Diagnostic, Fix
from ema_lint.passes.findings import in_recomputed_region, module_diagnostic, owner_of, state_writes
from ema_lint.passes.tracer import MODULE_META, REGIONS_META, Trace, is_running_stat_module

FIX = Fix("Replay the module's buffers when checkpoint recomputes it", Applicability.UNSAFE)
CALL_SITE_HINT = Fix(
    "Checkpoint the region with `context_fn=ema_lint.runtime.replay_buffers`", Applicability.DISPLAY_ONLY
)


def stateful_modules_in_checkpoint(trace: Trace) -> dict[str, torch.nn.Module]:
    """Qualified name -> module, for the non-running-stat modules that write buffers inside a
    recomputed region, in graph order."""
    found = dict(_recomputed_hidden_writers(trace))
    root = trace.root
    for node, attribute in state_writes(trace.graph):
        if in_recomputed_region(node):
            owner, _ = owner_of(attribute)
            module = root.get_submodule(owner)
            if not is_running_stat_module(module):
                found.setdefault(owner, module)
    return found


def replay_targets(trace: Trace) -> dict[str, torch.nn.Module]:
    """Qualified name -> module for the modules `ema_lint.runtime.replay_on_recompute` makes
    exact: modules whose own forward the checkpoint recomputes and whose buffers (with their
    submodules') hold what that forward writes. A write made by the function checkpoint was
    given, such as a method (`checkpoint(self._inner, x)`), belongs to the module that called
    checkpoint, whose forward recomputation does not rerun: only the call site can fix it. So
    can only the call site fix a module whose forward runs more than once per step."""
    root = trace.root
    targets = dict(_recomputed_hidden_writers(trace))
    for node, attribute in state_writes(trace.graph):
        if not in_recomputed_region(node):
            continue
        owner, _ = owner_of(attribute)
        if is_running_stat_module(root.get_submodule(owner)):
            continue
        writer = node.meta.get(MODULE_META, "")
        innermost = trace.regions[node.meta[REGIONS_META][-1]]
        if writer != innermost.module and _within(owner, writer):
            targets.setdefault(writer, root.get_submodule(writer))
    # One snapshot per module: a module run more than once a step would replay every call
    # from its last call's state.
    return {name: module for name, module in targets.items() if trace.module_calls[name] == 1}


def find_stateful_modules_in_checkpoint(trace: Trace) -> list[Diagnostic]:
    replayed = replay_targets(trace)
    return [
        module_diagnostic(
            "EMA103",
            f"`{name or type(module).__name__}` ({type(module).__name__}) writes its buffers in forward, "
            "so checkpoint recomputation writes them again in backward",
            trace.root,
            name,
            FIX if any(_within(name, target) for target in replayed) else CALL_SITE_HINT,
        )
        for name, module in stateful_modules_in_checkpoint(trace).items()
    ]


def _recomputed_hidden_writers(trace: Trace) -> Iterator[tuple[str, torch.nn.Module]]:
    """Leaves called in a recomputed region whose hooks or parametrizations may write buffers."""
    for node in trace.graph.nodes:
        if node.op == "call_module" and in_recomputed_region(node):
            module = trace.root.get_submodule(str(node.target))
            if not is_running_stat_module(module) and _writes_buffers_invisibly(module):
                yield str(node.target), module


def _within(name: str, ancestor: str) -> bool:
    return not ancestor or name == ancestor or name.startswith(ancestor + ".")


def _writes_buffers_invisibly(module: torch.nn.Module) -> bool:
    """A leaf whose hooks or parametrizations may write buffers the graph cannot show."""
    owns_buffers = any(True for _ in module.buffers())
    has_hooks = bool(module._forward_pre_hooks) or bool(module._forward_hooks)
    parametrized = hasattr(module, "parametrizations")
    return owns_buffers and (has_hooks or parametrized)
