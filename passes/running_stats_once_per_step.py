"""Make every running-stat module that a checkpoint recomputes update once per step."""

from __future__ import annotations

import torch
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ema_lint.passes.findings import in_recomputed_region
from ema_lint.passes.recompute_safety import is_recompute_safe
from ema_lint.passes.tracer import REGIONS_META, CheckpointRegion, is_running_stat_module
from ema_lint.runtime import convert_running_stats


class RunningStatsOncePerStepPass(PassBase):
    """Converts (in place, with `ema_lint.runtime.convert_running_stats`) each running-stat
    module called inside a recomputed region. The module objects are shared with the traced
    model, so the model is converted too; the graph itself is unchanged."""

    def __init__(self, regions: dict[int, CheckpointRegion]) -> None:
        super().__init__()
        self.regions = regions
        self.converted: list[str] = []

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        for node in graph_module.graph.nodes:
            if node.op != "call_module" or not in_recomputed_region(node):
                continue
            module = graph_module.get_submodule(str(node.target))
            regions = [self.regions[i] for i in node.meta[REGIONS_META]]
            if is_running_stat_module(module) and not is_recompute_safe(module, regions):
                convert_running_stats(module)
                self.converted.append(str(node.target))
        return PassResult(graph_module, bool(self.converted))

    def ensures(self, graph_module: torch.fx.GraphModule) -> None:
        graph_module.graph.lint()
