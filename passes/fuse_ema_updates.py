"""Fuse per-tensor EMA updates (EMA301) into `torch._foreach_*` calls, bit for bit."""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
from torch.fx.node import Node
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ema_lint.passes.find_ema_loop_updates import (
    AFFINE_COPY,
    LERP,
    MUL_ADD,
    MUL_ADD_PRODUCT,
    UpdateGroup,
    resolve_attribute,
    fusable,
    update_groups,
)
from ema_lint.passes.tracer import CARRIES_GRAD_META, GRAD_ENABLED_META, MODULE_META, REGIONS_META

Tensors = Sequence[torch.Tensor]


def _factor(value: float, like: torch.Tensor) -> float | torch.Tensor:
    # The Python-scalar foreach overloads round the factor to a bf16 / fp16 list's dtype first
    # on the CPU, unlike `Tensor.mul_(float)`; a 0-dim float64 tensor factor does not, but
    # costs a type promotion per tensor, so fp32 / fp64 lists (exact either way) keep the scalar.
    if like.dtype in (torch.float32, torch.float64):
        return value
    return torch.tensor(value, dtype=torch.float64, device=like.device)


@torch.no_grad()
def foreach_mul_add_(emas: Tensors, sources: Tensors, decay: float, alpha: float) -> None:
    """`ema.mul_(decay).add_(source, alpha=alpha)` for every pair."""
    torch._foreach_mul_(emas, _factor(decay, emas[0]))
    torch._foreach_add_(emas, sources, alpha=alpha)


@torch.no_grad()
def foreach_mul_add_product_(emas: Tensors, sources: Tensors, decay: float, weight: float) -> None:
    """`ema.mul_(decay).add_(weight * source)` for every pair; also `ema.copy_(ema * decay +
    source * weight)` (or `ema.data = ...`): with one dtype on both sides the product `ema * decay`
    rounds the same written into `ema` or into a new tensor, and `+` commutes, so the two
    spellings compute the same values."""
    products = torch._foreach_mul(sources, _factor(weight, emas[0]))
    torch._foreach_mul_(emas, _factor(decay, emas[0]))
    torch._foreach_add_(emas, products)


@torch.no_grad()
def foreach_lerp_(emas: Tensors, sources: Tensors, weight: float) -> None:
    """`ema.lerp_(source, weight)` for every pair."""
    torch._foreach_lerp_(emas, sources, weight)


_FUSED: dict[str, Callable[..., None]] = {
    MUL_ADD: foreach_mul_add_,
    MUL_ADD_PRODUCT: foreach_mul_add_product_,
    LERP: foreach_lerp_,
    AFFINE_COPY: foreach_mul_add_product_,
}


class FuseEmaUpdatesPass(PassBase):
    """Replaces each fusable run of per-tensor EMA updates (see `find_ema_loop_updates`) by one
    call of the matching `foreach_*_` function above, placed after the run's last node so it
    stays under the run's grad mode; nothing else in the graph changes."""

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        graph = graph_module.graph
        resolve = functools.partial(resolve_attribute, graph_module)
        groups = [group for group in update_groups(graph) if fusable(group, resolve)]
        for group in groups:
            _fuse(graph, group)
        if groups:
            graph_module.recompile()
        return PassResult(graph_module, bool(groups))

    def ensures(self, graph_module: torch.fx.GraphModule) -> None:
        graph_module.graph.lint()


def _fuse(graph: torch.fx.Graph, group: UpdateGroup) -> None:
    order = {node: index for index, node in enumerate(graph.nodes)}
    nodes = sorted({n for update in group.updates for n in update.nodes}, key=order.__getitem__)
    emas = [update.ema for update in group.updates]
    sources = [update.source for update in group.updates]
    numbers = (group.weight,) if group.form == LERP else (group.decay, group.weight)
    with graph.inserting_after(nodes[-1]):
        fused = graph.call_function(_FUSED[group.form], (emas, sources, *numbers))
    fused.meta.update({key: nodes[-1].meta[key] for key in (REGIONS_META, GRAD_ENABLED_META, MODULE_META)})
    fused.meta[CARRIES_GRAD_META] = False
    attributes: set[Node] = {n for node in nodes for n in node.all_input_nodes if n.op == "get_attr"}
    for node in reversed(nodes):
        graph.erase_node(node)
    for node in attributes:
        if not node.users:
            graph.erase_node(node)
