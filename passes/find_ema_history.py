"""EMA201 ema-update-keeps-graph, found in a traced model.

## What it does
Finds buffers and tensor attributes written (in place or by assignment) with grad mode on
from a value that carries autograd history, with no `detach` on the path.

## Why is this bad?
The attribute keeps the step's graph alive: memory grows every step, and the next backward
through it fails with "Trying to backward through the graph a second time".

## Fix safety
`transform` registers `ema_lint.runtime.detach_after_forward` on each module whose forward
writes the attribute: the attribute holds the same values, the step's own gradients are
unchanged, and no graph outlives the step. `DetachHistoryPass` instead detaches the written value in the graph, which
also stops the gradient that flows through the new value within the step. Both are unsafe
when the model meant the gradient to reach across steps (use `DifferentiableEMA` then).
"""

from __future__ import annotations

from ema_lint.diagnostics import Applicability, Diagnostic, Fix
from ema_lint.passes.findings import module_diagnostic, owner_of, state_writes
from ema_lint.passes.tracer import CARRIES_GRAD_META, GRAD_ENABLED_META, MODULE_META, Trace

FIX = Fix("Detach the attribute after each forward", Applicability.UNSAFE)


def history_keeping_attributes(trace: Trace) -> dict[str, set[str]]:
    """Qualified names (`inner.average`) of the attributes written with grad on from a value
    that carries autograd history, in the order the forward first writes them, each with the
    modules whose forwards write it (`inner`, or `""` when the root's forward writes
    `self.inner.average`): the history is complete when such a forward returns."""
    attributes: dict[str, set[str]] = {}
    for node, attribute in state_writes(trace.graph):
        if node.meta.get(GRAD_ENABLED_META) and node.meta.get(CARRIES_GRAD_META):
            attributes.setdefault(attribute, set()).add(node.meta.get(MODULE_META, ""))
    return attributes


def find_ema_history(trace: Trace) -> list[Diagnostic]:
    diagnostics = []
    for attribute in history_keeping_attributes(trace):
        owner, name = owner_of(attribute)
        module = trace.root.get_submodule(owner)
        where = f"`{owner}`" if owner else f"the root `{type(module).__name__}`"
        message = f"`{name}` of {where} is updated from a value that carries autograd history"
        diagnostics.append(module_diagnostic("EMA201", message, module, owner, FIX))
    return diagnostics
