"""EMA102 momentum-correction-workaround."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import libcst as cst

from ema_lint.diagnostics import Applicability, Fix, Severity
from ema_lint.project import ProjectIndex, builtin_running_stat_kind
from ema_lint.rule import Example
from ema_lint.rules._checkpoint_sites import CheckpointSite, CheckpointSiteRule, argument

# `momentum=` of these is an optimizer's, not a running-stat module's
_NOT_RUNNING_STATS = ("torch.optim.",)
# BatchNorm*/InstanceNorm*(num_features, eps, momentum, ...)
_MOMENTUM_POSITION = 2


class MomentumCorrectionWorkaround(CheckpointSiteRule):
    """
    ## What it does
    Finds the momentum "correction" `1 - sqrt(1 - m)` (also `1 - (1 - m) ** 0.5`,
    `1 - 0.9 ** 0.5`, `1 - pow(1 - m, 0.5)`) used as the momentum of a running-stat module
    in a file that uses activation checkpointing. It counts as used as a momentum when it is
    the `momentum=` argument of a call (or the third positional argument of a torch
    BatchNorm/InstanceNorm), the value assigned to `<module>.momentum`, a parameter default
    or a name whose name contains `momentum`, or a name later passed as `momentum=`. A file
    uses checkpointing when it calls a region entry point that EMA101 knows (under any name)
    or a `*checkpointing*` method such as timm's `set_grad_checkpointing`.

    ## Why is this bad?
    The workaround makes two updates per step decay like one, but only for modules whose
    every forward is recomputed exactly once: modules outside the checkpointed region,
    evaluation under `torch.no_grad()` and the last segment of `checkpoint_sequential` get
    the wrong momentum. `num_batches_tracked` still counts twice, which breaks
    `momentum=None` (cumulative averaging), and the result differs from the
    un-checkpointed model in the last bits.

    ## Example
    ```python
    BN_MOMENTUM = 1 - math.sqrt(1 - 0.1)
    ```

    ## Use instead
    ```python
    BN_MOMENTUM = 0.1
    # and at each checkpoint call:
    checkpoint(self.block, x, use_reentrant=False, context_fn=running_stats_context_fn)
    ```

    ## Fix safety
    Unsafe: it restores the uncorrected momentum and adds
    `context_fn=running_stats_context_fn` to every checkpoint call in the file whose region
    holds a running-stat module (switching reentrant calls to `use_reentrant=False`), which
    changes the statistics' last bits. When a region in the file cannot take a
    `context_fn` (library-driven checkpointing), the fix is display-only: restore the
    momentum and call `ema_lint.runtime.convert_running_stats(model)`.
    """

    code = "EMA102"
    name = "momentum-correction-workaround"
    severity = Severity.WARNING
    summary = "BatchNorm momentum is corrected by hand for checkpoint recomputation"

    VALID = (
        Example(
            """
            import math
            import torch.nn as nn

            BN_MOMENTUM = 1 - math.sqrt(1 - 0.1)  # no checkpointing in this file

            def make_norm(channels):
                return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
            """
        ),
        Example(
            """
            import math
            from torch.utils.checkpoint import checkpoint

            def diffusion_step(x, noise, alpha_bar, denoiser):
                sigma = 1 - math.sqrt(1 - alpha_bar)
                return checkpoint(denoiser, x + sigma * noise, use_reentrant=False)
            """
        ),
    )
    INVALID = (
        Example(
            """
            import math
            import torch.nn as nn
            from torch.utils.checkpoint import checkpoint

            BN_MOMENTUM = 1 - math.sqrt(1 - 0.1)

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.block = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8, momentum=BN_MOMENTUM))

                def forward(self, x):
                    return checkpoint(self.block, x, use_reentrant=False)
            """,
            message=(
                "`1 - math.sqrt(1 - 0.1)` compensates for checkpoint recomputation only approximately, "
                "still counts `num_batches_tracked` twice, and is wrong for forwards that are not recomputed"
            ),
            fixed="""
            import math
            import torch.nn as nn
            from torch.utils.checkpoint import checkpoint
            from ema_lint.runtime import running_stats_context_fn

            BN_MOMENTUM = 0.1

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.block = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8, momentum=BN_MOMENTUM))

                def forward(self, x):
                    return checkpoint(self.block, x, use_reentrant=False, context_fn=running_stats_context_fn)
            """,
        ),
    )

    @classmethod
    def could_report(cls, source: bytes, project: ProjectIndex, module_name: str) -> bool:
        """A correction needs a square root (`sqrt`, `**`, `pow`), and the file must call a
        `*checkpointing*` method or a region entry point (which `uses_checkpointing` never misses)."""
        has_root = b"sqrt" in source or b"**" in source or b"pow" in source
        return has_root and (b"checkpointing" in source or cls.uses_checkpointing(source, project, module_name))

    @classmethod
    def structurally_possible(cls, project: ProjectIndex, module_name: str) -> bool:
        facts = project.modules.get(module_name)
        return facts is None or facts.may_hold_momentum_correction

    def __init__(self, context) -> None:
        super().__init__(context)
        self.sites: list[CheckpointSite] = []
        self.uses_library_checkpointing = False
        self.regions_seen = False
        self.corrections: dict[cst.BaseExpression, None] = {}  # ordered set
        self.corrected_names: dict[str, list[cst.BaseExpression]] = {}
        self.momentum_names: set[str] = set()
        # `m.momentum = 1 - sqrt(1 - m.momentum)`: restoring it leaves a self-assignment
        self.statements: dict[cst.BaseExpression, cst.Assign] = {}

    # -- where checkpointing happens -----------------------------------------------------

    def visit_Call(self, node: cst.Call) -> None:
        if isinstance(node.func, cst.Attribute) and "checkpointing" in node.func.attr.value:
            self.uses_library_checkpointing = True
        if not self.no_grad_depth and self.region_of(node) is not None:
            self.regions_seen = True
            site = self.site_at(node)
            if site is not None:
                self.sites.append(site)
        self._momentum_arguments(node)

    # -- where a correction is used as a momentum ----------------------------------------

    def _momentum_arguments(self, call: cst.Call) -> None:
        callee = self.qualified(call.func) or ""
        if callee.startswith(_NOT_RUNNING_STATS):
            return
        value = argument(call, "momentum", _MOMENTUM_POSITION if builtin_running_stat_kind(callee, None) else 99)
        if value is not None:
            self._used_as_momentum(value)

    def _used_as_momentum(self, value: cst.BaseExpression) -> None:
        if _uncorrected(value) is not None:
            self.corrections[value] = None
        elif isinstance(value, cst.Name):
            self.momentum_names.add(value.value)

    def visit_Assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            self._assigned(target.target, node.value)
        if len(node.targets) == 1 and node.value in self.corrections:
            self.statements[node.value] = node

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        if node.value is not None:
            self._assigned(node.target, node.value)

    def _assigned(self, target: cst.BaseExpression, value: cst.BaseExpression) -> None:
        if isinstance(target, cst.Attribute) and target.attr.value == "momentum":
            self._used_as_momentum(value)
        elif isinstance(target, cst.Name) and _uncorrected(value) is not None:
            self.corrected_names.setdefault(target.value, []).append(value)
            if "momentum" in target.value.lower():
                self.corrections[value] = None

    def visit_Param(self, node: cst.Param) -> None:
        if node.default is not None and "momentum" in node.name.value.lower():
            self._used_as_momentum(node.default)

    # -- report --------------------------------------------------------------------------

    def leave_Module(self, original_node: cst.Module) -> None:
        if not (self.regions_seen or self.uses_library_checkpointing):
            return
        for name in self.momentum_names:
            for value in self.corrected_names.get(name, ()):
                self.corrections[value] = None
        for value in sorted(self.corrections, key=lambda node: (self.range_of(node).start.line, self.range_of(node).start.column)):
            text = self.context.module.code_for_node(value).strip()
            self.report(
                value,
                f"`{text}` compensates for checkpoint recomputation only approximately, still counts "
                "`num_batches_tracked` twice, and is wrong for forwards that are not recomputed",
                fix=self._fix(value),
            )

    def _fix(self, value: cst.BaseExpression) -> Fix:
        restored = _uncorrected(value)
        statement = self.statements.get(value)
        reassigns = statement is not None and self.context.module.code_for_node(statement.targets[0].target) == restored
        restore = "Drop the momentum correction" if reassigns else f"Use momentum `{restored}`"
        site_fixes = [self.site_fix(site) for site in self.sites]
        if self.uses_library_checkpointing or any(not fix.edits for fix in site_fixes):
            return Fix(
                f"{restore} and call `ema_lint.runtime.convert_running_stats(model)` once before training",
                Applicability.DISPLAY_ONLY,
            )
        edits = [self.edit_replacing(statement, "pass") if reassigns else self.edit_replacing(value, restored)]
        imports = []
        for fix in site_fixes:
            edits.extend(fix.edits)
            imports.extend(i for i in fix.imports if i not in imports)
        return Fix(
            f"{restore} and add `context_fn=running_stats_context_fn` at each checkpoint",
            Applicability.UNSAFE,
            tuple(edits),
            tuple(imports),
        )


def _uncorrected(value: cst.BaseExpression) -> str | None:
    """For `1 - sqrt(d)`-shaped momenta, the momentum they were derived from (`1 - d`), as code."""
    if not (
        isinstance(value, cst.BinaryOperation)
        and isinstance(value.operator, cst.Subtract)
        and _is_number(value.left, 1)
    ):
        return None
    decay = _square_root_of(value.right)
    if decay is None:
        return None
    if isinstance(decay, cst.BinaryOperation) and isinstance(decay.operator, cst.Subtract) and _is_number(decay.left, 1):
        return cst.Module([]).code_for_node(decay.right.with_changes(lpar=(), rpar=()))
    if isinstance(decay, (cst.Float, cst.Integer)):
        try:
            return str(Decimal(1) - Decimal(decay.value))
        except InvalidOperation:
            return None
    code = cst.Module([]).code_for_node(decay)
    simple = isinstance(decay, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)) or decay.lpar
    return f"1 - {code}" if simple else f"1 - ({code})"


def _square_root_of(node: cst.BaseExpression) -> cst.BaseExpression | None:
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Power) and _is_half(node.right):
        return node.left
    if isinstance(node, cst.Call) and node.args and not any(arg.star for arg in node.args):
        name = _dotted_tail(node.func)
        if name in ("sqrt",) and len(node.args) == 1:
            return node.args[0].value
        if name in ("pow", "power") and len(node.args) == 2 and _is_half(node.args[1].value):
            return node.args[0].value
    return None


def _dotted_tail(node: cst.BaseExpression) -> str | None:
    """`math.sqrt` / `np.sqrt` / `torch.sqrt` / `sqrt` -> "sqrt": every library's square root
    means the same here, so the module is not resolved."""
    if isinstance(node, cst.Attribute):
        return node.attr.value
    if isinstance(node, cst.Name):
        return node.value
    return None


def _is_half(node: cst.BaseExpression) -> bool:
    if _is_number(node, Decimal("0.5")):
        return True
    return (
        isinstance(node, cst.BinaryOperation)
        and isinstance(node.operator, cst.Divide)
        and _is_number(node.left, 1)
        and _is_number(node.right, 2)
    )


def _is_number(node: cst.BaseExpression, expected) -> bool:
    if not isinstance(node, (cst.Integer, cst.Float)):
        return False
    try:
        return Decimal(node.value.replace("_", "")) == Decimal(expected)
    except InvalidOperation:
        return False
