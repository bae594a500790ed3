from __future__ import annotations

from ema_lint.analysis.averaging_comprehensions import averaging_comprehensions
from ema_lint.analysis.model_ema_loops import model_ema_loops
from ema_lint.diagnostics import Severity
from ema_lint.rule import Example
from ema_lint.rules._autograd import AutogradRule
from ema_lint.analysis.expressions import one_line, strip_parens, through_data
from ema_lint.analysis.value_flow import FileFacts
from ema_lint.rules._parameter_loops import foreach_fix, parameter_loop

IN_PLACE_FORMS = frozenset(
    {"mul_add", "lerp_", "toward", "copy_affine", "copy_toward", "copy_lerp", "copy_through_function"}
)


class EmaUpdateInPythonLoop(AutogradRule):
    """## What it does
    Finds a model / teacher / momentum-encoder / Polyak EMA written as a Python loop that
    moves each tensor of one model toward the matching tensor of another by a weight: over
    `zip(ema.parameters(), model.parameters())`, `state_dict()` items or keys, lists kept on
    `self` or passed in (`update_ema(target_params, source_params, rate)`), with `mul_` /
    `add_`, `lerp_`, `copy_`, `*=` / `+=`, a `.data =` assignment or a per-tensor helper.
    A loop written through `.data` is reported here, with a note, rather than as EMA203.
    A weight average of two models built as a comprehension over their state dicts (model
    soups, WiSE-FT, merging: `{k: sd0[k] * (1 - a) + sd1[k] * a for k in sd0}`) is one too.

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
    Loops written through `.data` get the same rewrite, and it is safe there: a `.data` write
    records no graph, so the added `no_grad` changes no gradient. Other loop shapes are
    reported without a fix.
    """

    code = "EMA301"
    name = "ema-update-in-python-loop"
    severity = Severity.INFO
    summary = "Model EMA updated one tensor at a time in a Python loop"

    @classmethod
    def could_report(cls, source: bytes, project, module_name: str) -> bool:
        # every finding is inside a `for` loop
        return b"for" in source

    @classmethod
    def structurally_possible(cls, project, module_name: str) -> bool:
        facts = project.modules.get(module_name)
        return facts is None or facts.may_hold_loop_update

    def check(self, facts: FileFacts) -> None:
        module = self.context.module
        fixes = self._fixable_loops(facts)
        found = {id(f.loop): (f.loop, f.target, f.through_data) for f in model_ema_loops(facts)}
        # a recognised step over a module's tensors whose weight arrives as a function
        # (`ema_v.copy_(step(ema_v, model_v))`) is one too
        for key, (loop, data) in fixes.items():
            found.setdefault(key, (loop.node, loop.recurrence.state, data))
        for key, (loop, target, data) in found.items():
            fix = None
            if key in fixes:
                fixable, data_write = fixes[key]
                fix = foreach_fix(self, facts, fixable, safe_when_wrapped=data_write)
            notes = (
                ("written through `.data`, which also bypasses autograd's version checks; "
                 "the fused update belongs under `torch.no_grad()`",)
                if data
                else ()
            )
            self.report(
                loop,
                f"EMA update of `{one_line(module, _bare_state(target))}` runs as a Python loop over "
                f"`{one_line(module, strip_parens(loop.iter))}`, one kernel per tensor "
                "instead of one `torch._foreach_*` call",
                fix=fix,
                notes=notes,
            )
        for average in averaging_comprehensions(module):
            self.report(
                average.node,
                f"Weight average built one tensor at a time by a comprehension over "
                f"`{one_line(module, strip_parens(average.iterable))}`, one kernel per tensor "
                "instead of one `torch._foreach_*` call",
            )

    @staticmethod
    def _fixable_loops(facts: FileFacts) -> dict:
        """Loops over `.parameters()` whose body is one recognised step: the ones a
        `torch._foreach_*` rewrite can replace exactly."""
        fixable = {}
        for recurrence in facts.recurrences:
            if recurrence.form not in IN_PLACE_FORMS and not through_data(recurrence.state):
                continue
            loop = parameter_loop(facts, recurrence)
            if loop is not None and id(loop.node) not in fixable:
                fixable[id(loop.node)] = (loop, through_data(recurrence.state))
        return fixable

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

            def interpolate(zero_shot, fine_tuned, alpha):
                sd0 = zero_shot.state_dict()
                sd1 = fine_tuned.state_dict()
                return {k: sd0[k] * (1 - alpha) + sd1[k] * alpha for k in sd0}
            """,
            message=(
                "Weight average built one tensor at a time by a comprehension over `sd0`, one kernel per tensor"
                " instead of one `torch._foreach_*` call"
            ),
        ),
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


def _bare_state(node):
    """`ema_v` for `ema_v.data`: the tensor, as the message names it."""
    node = strip_parens(node)
    while through_data(node):
        node = strip_parens(node.value)
    return node
