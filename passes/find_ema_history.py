"""EMA201 ema-update-keeps-graph, found in a traced model.

## What it does
Finds buffers and tensor attributes written (in place or by assignment) with grad mode on
from a value that carries autograd history, with no `detach` on the path.

## Why is this bad?
The attribute keeps the step's graph alive: memory grows every step, and the next backward
through it fails with "Trying to backward through the graph a second time".

## Fix safety
`transform` registers `ema_lint.runtime.detach_after_forward` on the innermost module whose
forward encloses every write and read of the attribute: the attribute holds the same values,
the step's own gradients are unchanged, and no graph outlives the step. `DetachHistoryPass` instead detaches the written value in the graph, which
also stops the gradient that flows through the new value within the step. Both are unsafe
when the model meant the gradient to reach across steps (use `DifferentiableEMA` then).
"""

from __future__ import annotations

from ema_lint.diagnostics import Applicability, Diagnostic, Fix
from ema_lint.passes.findings import module_diagnostic, owner_of, state_writes
import torch
from torch.fx.node import Node

from ema_lint.passes.tracer import CARRIES_GRAD_META, GRAD_ENABLED_META, MODULE_META, Trace

FIX = Fix("Detach the attribute after each forward", Applicability.UNSAFE)


def history_keeping_attributes(trace: Trace) -> dict[str, tuple[str, tuple[str, ...]]]:
    """For each attribute (`inner.average`) written with grad on from a value that carries
    autograd history, in the order the forward first writes them: the module after whose
    forward to cut the history, and every qualified name holding the tensor (a buffer can be
    registered on several modules).

    That module is the innermost one whose forward encloses every write, every read and every
    holder: cutting earlier would change the gradient a later read in the same step gets."""
    writes: dict[str, list[Node]] = {}
    for node, attribute in state_writes(trace.graph):
        if node.meta.get(GRAD_ENABLED_META) and node.meta.get(CARRIES_GRAD_META):
            writes.setdefault(attribute, []).append(node)
    found = {}
    for attribute, nodes in writes.items():
        names = _names_of(trace.root, attribute)
        reads = [n for n in trace.graph.nodes if n.op == "get_attr" and n.target in names]
        paths = {n.meta.get(MODULE_META, "") for n in nodes}
        paths.update(user.meta.get(MODULE_META, "") for n in (*nodes, *reads) for user in n.users)
        paths.update(owner_of(name)[0] for name in names)
        found[attribute] = (_common_ancestor(paths), names)
    return found


def _names_of(root: torch.nn.Module, attribute: str) -> tuple[str, ...]:
    """`attribute` and every other qualified name of a buffer that is the same tensor."""
    owner, name = owner_of(attribute)
    tensor = root.get_submodule(owner)._buffers.get(name)
    if tensor is None:
        return (attribute,)
    names = [attribute]
    for path, module in root.named_modules(remove_duplicate=False):
        for key, buffer in module._buffers.items():
            qualified = f"{path}.{key}" if path else key
            if buffer is tensor and qualified not in names:
                names.append(qualified)
    return tuple(names)


def _common_ancestor(paths: set[str]) -> str:
    parts = [path.split(".") if path else [] for path in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def find_ema_history(trace: Trace) -> list[Diagnostic]:
    diagnostics = []
    for attribute in history_keeping_attributes(trace):
        owner, name = owner_of(attribute)
        module = trace.root.get_submodule(owner)
        where = f"`{owner}`" if owner else f"the root `{type(module).__name__}`"
        message = f"`{name}` of {where} is updated from a value that carries autograd history"
        diagnostics.append(module_diagnostic("EMA201", message, trace.root, owner, FIX))
    return diagnostics
