from __future__ import annotations

from ema_lint.diagnostics import Severity
from ema_lint.rule import Example
from ema_lint.rules._autograd import RecurrenceRule
from ema_lint.analysis.expressions import one_line, strip_parens, through_data
from ema_lint.analysis.value_flow import FileFacts
from ema_lint.rules._parameter_loops import foreach_fix, parameter_loop


class EmaUpdateViaData(RecurrenceRule):
    """## What it does
    Finds EMA updates written through `.data`: `p_ema.data = d * p_ema.data + (1 - d) * p.data`,
    `p_ema.data.mul_(d).add_(p.data, alpha=1 - d)`, `p_ema.data.lerp_(...)`, `p_ema.data.copy_(...)`.

    ## Why is this bad?
    `.data` hands out the tensor's storage with autograd switched off for the write: autograd's
    version counter is not bumped, so if the EMA weights were saved for a backward pass earlier
    in the step (a teacher forward whose output enters the loss), that backward silently uses
    the overwritten values instead of raising. `torch.no_grad()` gives the same no-graph update
    with the checks kept, and is the documented way to write it.

    ## Example
    ```python
    def update_center(self, teacher_output):
        batch_center = teacher_output.mean(dim=0)
        self.center.data = self.center.data * self.m + batch_center.data * (1 - self.m)
    ```

    ## Use instead
    ```python
    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = teacher_output.mean(dim=0)
        self.center.mul_(self.m).add_(batch_center, alpha=1 - self.m)
    ```

    A `.data` update inside a per-tensor model-EMA loop is reported once, as that loop's
    EMA301 (with a note on `.data`), which carries the fused rewrite.

    ## Fix safety
    For a loop over `.parameters()` whose body is the single update, the fix is the
    `torch._foreach_*` rewrite of EMA301 (bit-identical values, under `torch.no_grad()`), and
    it is safe: a `.data` write records no graph, so adding `no_grad` changes no gradient.
    Other shapes are reported without a fix.
    """

    code = "EMA203"
    name = "ema-update-via-data"
    # Not an autograd leak (a `.data` write records no graph) but a bypass of autograd's
    # checks, so it warns where EMA201/EMA202 error.
    severity = Severity.WARNING
    summary = "EMA update written through `.data`, bypassing autograd's version checks"
    # A finding's state expression ends in the attribute `data`. Python allows spaces around
    # the dot (`p . data`), so the provable trigger is the identifier itself.
    triggers = ("data",)
    # a `.data` update inside a model-EMA loop is that loop's EMA301, which notes the `.data`
    SUPERSEDED_BY = ("EMA301",)

    def check(self, facts: FileFacts) -> None:
        module = self.context.module
        for recurrence in facts.recurrences:
            if not through_data(recurrence.state):
                continue
            loop = parameter_loop(facts, recurrence)
            fix = foreach_fix(self, facts, loop, safe_when_wrapped=True) if loop is not None else None
            state = one_line(module, strip_parens(recurrence.state))
            site = recurrence.site
            remedy = (
                "drop `.data`: the update already runs under `torch.no_grad()`"
                if site.grad_off or site.function.grad_free
                else "update under `torch.no_grad()` instead"
            )
            self.report(
                recurrence.statement,
                f"EMA update writes `{state}`, which bypasses autograd's version checks; {remedy}",
                fix=fix,
            )

    VALID = (
        Example(
            """
            @torch.no_grad()
            def momentum_update(self):
                for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
                    k.mul_(self.m).add_(q, alpha=1.0 - self.m)
            """
        ),
        Example(
            """
            def sgd_step(model, lr):
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-lr)
            """
        ),
    )
    INVALID = (
        Example(
            """
            import torch

            class Centering(torch.nn.Module):
                def update_center(self, teacher_output):
                    batch_center = teacher_output.mean(dim=0)
                    self.center.data = self.center.data * self.m + batch_center.data * (1 - self.m)
            """,
            message=(
                "EMA update writes `self.center.data`, which bypasses autograd's version checks; "
                "update under `torch.no_grad()` instead"
            ),
        ),
    )
