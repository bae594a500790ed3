"""Traces of the parts of a model whose forward torch.fx cannot trace as a whole.

Hugging Face models, and many others, branch on their inputs and configuration in the
top-level forward, so the whole model never traces; their layers usually do. `trace_parts`
traces the largest submodules that trace, top down, and carries into each part the
checkpoint regions that its untraceable ancestors open around it: read from their source
(`forward_source`) or, for regions opened outside it, from library flags (`library_regions`). The analyses then run on each part's graph unchanged:
every name in a part's graph is qualified from the model's root.

A running-stat module reached this way, and a leaf that does not trace, becomes a one-node
graph: a call of the module inside the regions around it.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.fx

from ema_lint.passes.forward_source import checkpoint_calls
from ema_lint.passes.library_regions import own_region, source_region
from ema_lint.passes.tracer import (
    CARRIES_GRAD_META,
    GRAD_ENABLED_META,
    MODULE_META,
    RECOMPUTED_META,
    REGIONS_META,
    CheckpointRegion,
    Trace,
    is_running_stat_module,
    trace_part,
)


@dataclass
class PartialTraces:
    """`traces` cover every module of the model once; `untraced` maps each module whose
    forward did not trace (the root as "") to why; their children are traced instead."""

    traces: list[Trace] = field(default_factory=list)
    untraced: dict[str, str] = field(default_factory=dict)


def trace_parts(model: torch.nn.Module, reason: str) -> PartialTraces:
    """Traces of the parts of `model`, whose own forward did not trace for `reason`."""
    result = PartialTraces(untraced={"": reason})
    _visit_children(model, "", model, (), {}, result)
    return result


def _visit(
    model: torch.nn.Module,
    name: str,
    module: torch.nn.Module,
    enclosing: tuple[CheckpointRegion, ...],
    pending: dict[str, CheckpointRegion],
    result: PartialTraces,
) -> None:
    """`pending` are regions an ancestor's source opens around modules below this one, which
    a trace of this module would not see: then its children are visited instead."""
    if is_running_stat_module(module):
        result.traces.append(_called_inside(model, name, enclosing))
        return
    if not pending:
        try:
            result.traces.append(trace_part(model, name, enclosing))
            return
        except Exception as error:  # any failure of user code under tracing: trace the children
            result.untraced[name] = failure_reason(error)
    if next(module.children(), None) is None:
        result.traces.append(_called_inside(model, name, enclosing))
        return
    _visit_children(model, name, module, enclosing, pending, result)


def _visit_children(
    model: torch.nn.Module,
    name: str,
    module: torch.nn.Module,
    enclosing: tuple[CheckpointRegion, ...],
    pending: dict[str, CheckpointRegion],
    result: PartialTraces,
) -> None:
    own = own_region(module, name)
    inner = (*enclosing, own) if own is not None else enclosing
    pending = dict(pending)
    for call in checkpoint_calls(module):
        region = source_region(call, name)
        for target in call.targets:
            pending.setdefault(f"{name}.{target}" if name else target, region)
    for child_name, child in module.named_children():
        qualified = f"{name}.{child_name}" if name else child_name
        region = pending.get(qualified)
        below = {path: r for path, r in pending.items() if path.startswith(qualified + ".")}
        _visit(model, qualified, child, _chain((*inner, region) if region else inner), below, result)


def failure_reason(error: Exception) -> str:
    """Why a trace failed, in one line."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def _chain(regions: tuple[CheckpointRegion, ...]) -> tuple[CheckpointRegion, ...]:
    """The regions numbered 0, 1, ... outermost first, each the parent of the next, as a
    trace's region stack holds them."""
    return tuple(
        dataclasses.replace(region, id=index, parent=index - 1 if index else None)
        for index, region in enumerate(regions)
    )


def _called_inside(model: torch.nn.Module, name: str, enclosing: tuple[CheckpointRegion, ...]) -> Trace:
    graph = torch.fx.Graph()
    value = graph.placeholder("input")
    call = graph.call_module(name, (value,))
    graph.output(call)
    caller = name.rpartition(".")[0]
    for node in graph.nodes:
        node.meta[REGIONS_META] = tuple(region.id for region in enclosing)
        node.meta[RECOMPUTED_META] = any(region.grad_enabled for region in enclosing)
        node.meta[GRAD_ENABLED_META] = True
        node.meta[MODULE_META] = caller
        node.meta[CARRIES_GRAD_META] = True
    regions = {region.id: region for region in enclosing}
    return Trace(model, graph, regions, collections.Counter({name: 1}))
