"""EMA103 stateful-module-in-checkpoint."""

from __future__ import annotations

import libcst as cst

from ema_lint.diagnostics import Severity
from ema_lint.project import OTHER_BUFFERS
from ema_lint.rule import Example
from ema_lint.rules._checkpoint_sites import CheckpointSiteRule


class StatefulModuleInCheckpoint(CheckpointSiteRule):
    """
    ## What it does
    Finds activation-checkpointed regions (the entry points EMA101 knows) whose callable
    runs a module that writes registered buffers other than running statistics: modules
    wrapped with `torch.nn.utils.spectral_norm` or
    `torch.nn.utils.parametrizations.spectral_norm`, and project classes whose `forward`
    (or a method it calls on `self`) updates a buffer registered with `register_buffer`
    that is not `running_*` / `num_batches_tracked` (an EMA codebook, a step counter).

    ## Why is this bad?
    Checkpointing runs the region's forward again during backward, so each such buffer is
    updated twice per step: spectral norm runs two power iterations, an EMA buffer decays
    twice, a counter counts twice. `running_stats_context_fn` and `convert_running_stats`
    only protect running statistics, so EMA101's fix does not cover these.

    ## Example
    ```python
    self.conv = spectral_norm(nn.Conv2d(64, 64, 3))
    ...
    x = checkpoint(self.conv, x, use_reentrant=False)
    ```

    ## Use instead
    ```python
    from ema_lint.runtime import replay_buffers

    x = checkpoint(self.conv, x, use_reentrant=False, context_fn=replay_buffers)
    ```
    `replay_buffers` snapshots the buffers of the modules the region runs, recomputes from the
    snapshot and puts back the state the forward left, so the region trains exactly as if it
    were not checkpointed. For call sites you cannot edit, call
    `ema_lint.runtime.replay_on_recompute(module)` on the module.

    ## Fix safety
    Adding `context_fn=replay_buffers` to a non-reentrant call is safe: forward values are
    unchanged and every buffer, gradient and output equals the un-checkpointed model's (it
    replaces a `running_stats_context_fn` there, whose running statistics it restores too).
    Switching a reentrant (or default) call to `use_reentrant=False` is unsafe, as for EMA101.
    Calls the fix cannot reach (library wrappers, `**kwargs`) get the module-level hint.
    """

    code = "EMA103"
    name = "stateful-module-in-checkpoint"
    severity = Severity.ERROR
    summary = "A module that mutates registered buffers runs inside an activation-checkpointed region"
    STATE = OTHER_BUFFERS

    VALID = (
        Example(
            """
            import torch.nn as nn
            from torch.nn.utils import spectral_norm
            from torch.utils.checkpoint import checkpoint

            class Critic(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = spectral_norm(nn.Conv2d(3, 8, 3))
                    self.body = nn.Sequential(nn.Conv2d(8, 8, 3), nn.LeakyReLU(0.2))

                def forward(self, x):
                    return checkpoint(self.body, self.conv(x), use_reentrant=False)
            """
        ),
        Example(
            """
            import torch.nn as nn
            from torch.nn.utils import spectral_norm
            from torch.utils.checkpoint import checkpoint
            from ema_lint.runtime import replay_buffers

            class Critic(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Sequential(spectral_norm(nn.Conv2d(3, 8, 3)), nn.LeakyReLU(0.2))

                def forward(self, x):
                    return checkpoint(self.body, x, use_reentrant=False, context_fn=replay_buffers)
            """
        ),
    )
    INVALID = (
        Example(
            """
            import torch.nn as nn
            from torch.nn.utils import spectral_norm
            from torch.utils.checkpoint import checkpoint

            class Critic(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Sequential(spectral_norm(nn.Conv2d(3, 8, 3)), nn.LeakyReLU(0.2))

                def forward(self, x):
                    return checkpoint(self.body, x, use_reentrant=False)
            """,
            message="`self.body` mutates registered buffers twice under `checkpoint`",
            fixed="""
            import torch.nn as nn
            from torch.nn.utils import spectral_norm
            from torch.utils.checkpoint import checkpoint
            from ema_lint.runtime import replay_buffers

            class Critic(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Sequential(spectral_norm(nn.Conv2d(3, 8, 3)), nn.LeakyReLU(0.2))

                def forward(self, x):
                    return checkpoint(self.body, x, use_reentrant=False, context_fn=replay_buffers)
            """,
        ),
    )

    def visit_Call(self, node: cst.Call) -> None:
        self.report_site(node, "mutates registered buffers")
