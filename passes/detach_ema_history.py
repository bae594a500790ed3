"""Cut the autograd history out of values written into buffers and tensor attributes."""

from __future__ import annotations

import torch
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ema_lint.passes.findings import state_writes, written_operands
from ema_lint.passes.tracer import CARRIES_GRAD_META, GRAD_ENABLED_META


class DetachHistoryPass(PassBase):
    """For each attribute write made with grad on from a grad-carrying value (EMA201), feeds the
    write `value.detach()` instead: the attribute holds the same values, without the graph."""

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        graph = graph_module.graph
        modified = False
        for node, _ in list(state_writes(graph)):
            if not node.meta.get(GRAD_ENABLED_META):
                continue
            for operand in written_operands(node):
                if not operand.meta.get(CARRIES_GRAD_META):
                    continue
                with graph.inserting_before(node):
                    detached = graph.call_method("detach", (operand,))
                detached.meta.update(operand.meta)
                detached.meta[CARRIES_GRAD_META] = False
                node.replace_input_with(operand, detached)
                modified = True
            node.meta[CARRIES_GRAD_META] = False
        if modified:
            graph_module.recompile()
        return PassResult(graph_module, modified)

    def ensures(self, graph_module: torch.fx.GraphModule) -> None:
        graph_module.graph.lint()

