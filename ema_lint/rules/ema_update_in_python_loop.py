from __future__ import annotations

from ema_lint.diagnostics import Severity
from ema_lint.rule import Example
from ema_lint.rules._autograd import FileFacts, RecurrenceRule, one_line, strip_parens, through_data
from ema_lint.rules._parameter_loops import foreach_fix, parameter_loop

IN_PLACE_FORMS = frozenset(
    {"mul_add", "lerp_", "toward", "copy_affine", "copy_toward", "copy_lerp", "copy_through_function"}
)


class EmaUpdateInPythonLoop(RecurrenceRule):
    """## What it does
    Finds a model / teacher / momentum-encoder EMA written as a Python loop over a module's
    tensors (`zip(ema.parameters(), model.parameters())`, `state_dict()` values, `buffers()`)
    that updates each tensor in place with `mul_` / `add_`, `lerp_` or `copy_`.

    ## Why is this bad?
    The loop launches a few kernels per tensor, hundreds per step for a real model, and on an
    accelerator the launch overhead dominates. `torch._foreach_mul_` + `torch._foreach_add_`
    (or `torch._foreach_lerp_`) update every tensor in a handful of fused launches.

    ## Example
    ```python
    @torch.no_grad()
    def update(self, model):
        for ema_p, p in zip(self.ema.parameters(), model.parameters()):
            ema_p.mul_(self.decay).add_(p, alpha=1 - self.decay)
    ```

    ## Use instead
    ```python
    @torch.no_grad()
    def update(self, model):
        torch._foreach_mul_(list(self.ema.parameters()), self.decay)
        torch._foreach_add_(list(self.ema.parameters()), list(model.parameters()), alpha=1 - self.decay)
    ```
    `ema_lint.runtime.ModelEMA` / `foreach_ema_update` do this for a whole model.

    ## Fix safety
    The rewrite repeats the loop body's operations in the same order (`mul_` then `add_` with
    the same `alpha`, `lerp_` with the same weight, `a * d + b * w` as a multiply then an add of
    a product), so results are bit-identical when the EMA and model tensors share dtype and
    device; it is safe inside `torch.no_grad()`. Outside one it is unsafe: it adds the
    `no_grad` that the loop lacks, which changes what autograd records (see EMA201). Only loops
    over `.parameters()` with a single-statement body are rewritten; `state_dict()` and
    `buffers()` hold integer tensors that a float `_foreach_mul_` cannot update in place.
    Loops written through `.data` are reported as EMA203, which carries the same fix.
    """

    code = "EMA301"
    name = "ema-update-in-python-loop"
    severity = Severity.INFO
    summary = "Model EMA updated one tensor at a time in a Python loop"
    # A finding is a loop whose iterable is (or is a name bound to) a `.parameters()`,
    # `.named_parameters()`, `.buffers()`, `.named_buffers()` or `.state_dict()` call; each
    # of those spellings contains one of these words.
    triggers = ("parameters", "buffers", "state_dict")

    def check(self, facts: FileFacts) -> None:
        reported: set[int] = set()
        for recurrence in facts.recurrences:
            if recurrence.form not in IN_PLACE_FORMS or through_data(recurrence.state):
                continue
            loop = parameter_loop(facts, recurrence)
            if loop is None or id(loop.node) in reported:
                continue
            if any(
                through_data(other.state) and other.site.loops and other.site.loops[-1].node is loop.node
                for other in facts.recurrences
            ):
                continue  # EMA203 reports this loop with the same fix
            reported.add(id(loop.node))
            module = self.context.module
            self.report(
                loop.node,
                f"EMA update of `{loop.state_name}` runs as a Python loop over "
                f"`{one_line(module, strip_parens(loop.node.iter))}`, one kernel per tensor "
                "instead of one `torch._foreach_*` call",
                fix=foreach_fix(self, facts, loop, safe_when_wrapped=False),
            )

    VALID = (
        Example(
            """
            @torch.no_grad()
            def update(ema, model, decay):
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
            """
        ),
        Example(
            """
            @torch.no_grad()
            def update(self, exp_avgs, grads):
                for exp_avg, grad in zip(exp_avgs, grads):
                    exp_avg.mul_(0.9).add_(grad, alpha=0.1)
            """
        ),
    )
    INVALID = (
        Example(
            """
            import torch

            @torch.no_grad()
            def update(ema, model, decay):
                for ema_p, p in zip(ema.parameters(), model.parameters()):
                    ema_p.mul_(decay).add_(p, alpha=1 - decay)
            """,
            message=(
                "EMA update of `ema_p` runs as a Python loop over `zip(ema.parameters(), model.parameters())`,"
                " one kernel per tensor instead of one `torch._foreach_*` call"
            ),
            fixed="""
            import torch

            @torch.no_grad()
            def update(ema, model, decay):
                torch._foreach_mul_(list(ema.parameters()), decay)
                torch._foreach_add_(list(ema.parameters()), list(model.parameters()), alpha=1 - decay)
            """,
        ),
    )
