"""EMA201 ema-update-keeps-graph, found in a traced model.

## What it does
Finds buffers and tensor attributes written (in place or by assignment) with grad mode on
from a value that carries autograd history, with no `detach` on the path.

## Why is this bad?
The attribute keeps the step's graph alive: memory grows every step, and the next backward
through it fails with "Trying to backward through the graph a second time".

## Fix safety
`DetachHistoryPass` inserts `detach` on the written value: the attribute holds the same
values, and no gradient flows into it across steps (unsafe when the model meant that gradient).
"""

from __future__ import annotations

from ema_lint.diagnostics import Applicability, Diagnostic, Fix
from ema_lint.passes.findings import module_diagnostic, owner_of, state_writes
from ema_lint.passes.tracer import CARRIES_GRAD_META, GRAD_ENABLED_META, Trace

FIX = Fix("Detach the value written into the attribute", Applicability.UNSAFE)


def find_ema_history(trace: Trace) -> list[Diagnostic]:
    diagnostics: dict[str, Diagnostic] = {}
    for node, attribute in state_writes(trace.graph):
        if attribute in diagnostics or not node.meta.get(GRAD_ENABLED_META):
            continue
        if not node.meta.get(CARRIES_GRAD_META):
            continue
        owner, name = owner_of(attribute)
        module = trace.root.get_submodule(owner)
        where = f"`{owner}`" if owner else f"the root `{type(module).__name__}`"
        message = f"`{name}` of {where} is updated from a value that carries autograd history"
        diagnostics[attribute] = module_diagnostic("EMA201", message, module, owner, FIX)
    return list(diagnostics.values())
