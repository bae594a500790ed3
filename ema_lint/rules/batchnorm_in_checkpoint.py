"""EMA101 batchnorm-in-checkpoint."""

from __future__ import annotations

import libcst as cst

from ema_lint.diagnostics import Severity
from ema_lint.rule import Example
from ema_lint.rules._checkpoint_sites import CheckpointSiteRule


class BatchnormInCheckpoint(CheckpointSiteRule):
    """
    ## What it does
    Finds activation-checkpointed regions (`torch.utils.checkpoint.checkpoint`,
    `checkpoint_sequential`, timm's `checkpoint`/`checkpoint_seq`, `checkpoint_wrapper`,
    `apply_activation_checkpointing`, DeepSpeed's `checkpoint`) whose callable runs a module
    with running statistics: BatchNorm, SyncBatchNorm, InstanceNorm with
    `track_running_stats=True`, their subclasses, or a project class whose `forward`
    updates a registered buffer. The callable is followed through lambdas, closures,
    bound methods, `self.<attr>` and `for block in self.blocks` loops, and across files.
    fairscale's `checkpoint_wrapper` is not reported: it stops every `_BatchNorm` inside
    from tracking statistics during its no-grad first pass (fairseq's copy of it does not).
    Other running-stat modules inside it (an `InstanceNorm` tracking statistics, a project
    class updating its own buffers) are not patched by fairscale and are missed for now.

    ## Why is this bad?
    Checkpointing runs the region's forward again during backward. Every running-stat
    module in it updates `running_mean`/`running_var` twice per step and counts
    `num_batches_tracked` twice, so its statistics drift from the un-checkpointed model's.

    ## Example
    ```python
    checkpoint(self.layers, x, use_reentrant=False)
    ```

    ## Use instead
    ```python
    from ema_lint.runtime import running_stats_context_fn

    checkpoint(self.layers, x, use_reentrant=False, context_fn=running_stats_context_fn)
    ```

    ## Fix safety
    Adding `context_fn=running_stats_context_fn` to a non-reentrant call is safe: outputs
    and gradients are unchanged and statistics match the un-checkpointed model. Switching a
    reentrant (or unspecified) call to `use_reentrant=False` is unsafe: the two variants
    differ in which inputs need gradients. Library-driven regions get a display-only hint
    to call `ema_lint.runtime.convert_running_stats(model)`.
    """

    code = "EMA101"
    name = "batchnorm-in-checkpoint"
    severity = Severity.ERROR
    summary = "A module with running statistics runs inside an activation-checkpointed region"
    # every region entry point has "checkpoint" in its name; other spellings are imported
    # aliases, which `could_report` finds through the project index
    triggers = ("checkpoint",)

    VALID = (
        Example(
            """
            import torch.nn as nn
            from torch.utils.checkpoint import checkpoint

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.mlp = nn.Sequential(nn.Linear(8, 8), nn.GELU())
                    self.norm = nn.BatchNorm1d(8)

                def forward(self, x):
                    return self.norm(checkpoint(self.mlp, x, use_reentrant=False))
            """
        ),
        Example(
            """
            import torch.nn as nn
            from torch.utils.checkpoint import checkpoint

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False))

                def forward(self, x):
                    return checkpoint(self.body, x, use_reentrant=False)
            """
        ),
    )
    INVALID = (
        Example(
            """
            import torch.nn as nn
            from torch.utils.checkpoint import checkpoint

            class Block(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv2d(8, 8, 3, padding=1)
                    self.bn = nn.BatchNorm2d(8)

                def forward(self, x):
                    return self.bn(self.conv(x))

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.blocks = nn.ModuleList([Block() for _ in range(4)])

                def forward(self, x):
                    for block in self.blocks:
                        x = checkpoint(block, x, use_reentrant=False)
                    return x
            """,
            message="`block` → `Net.blocks` → `Block.bn` updates running stats twice under `checkpoint`",
            fixed="""
            import torch.nn as nn
            from torch.utils.checkpoint import checkpoint
            from ema_lint.runtime import running_stats_context_fn

            class Block(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv2d(8, 8, 3, padding=1)
                    self.bn = nn.BatchNorm2d(8)

                def forward(self, x):
                    return self.bn(self.conv(x))

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.blocks = nn.ModuleList([Block() for _ in range(4)])

                def forward(self, x):
                    for block in self.blocks:
                        x = checkpoint(block, x, use_reentrant=False, context_fn=running_stats_context_fn)
                    return x
            """,
        ),
    )

    def visit_Call(self, node: cst.Call) -> None:
        self.report_site(node, "updates running stats")
