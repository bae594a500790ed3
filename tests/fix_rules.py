"""Test-only rules with known fixes, so the fix machinery is tested apart from the real rules.

Codes EMA9xx are never registered; each rule exercises one path of the fixer.
"""

from __future__ import annotations

import libcst as cst

from ema_lint.diagnostics import Applicability, Fix, RequiredImport, Severity
from ema_lint.rule import Rule


class _TestRule(Rule):
    severity = Severity.WARNING
    summary = "test-only rule"


class DetachAccumulatedLoss(_TestRule):
    """`total += loss` -> `total += loss.detach()`, SAFE, needing `import torch`."""

    code = "EMA902"
    name = "test-loss-accumulated"

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        if isinstance(node.operator, cst.AddAssign) and isinstance(node.value, cst.Name):
            value = node.value.value
            self.report(
                node,
                f"`{value}` is accumulated with its graph",
                fix=Fix(
                    f"Detach `{value}`",
                    Applicability.SAFE,
                    (self.edit_replacing(node.value, f"{value}.detach()"),),
                    (RequiredImport("torch"),),
                ),
            )


class DataToDetach(_TestRule):
    """`x.data` -> `x.detach()`, UNSAFE, needing `from ema_lint.runtime import ema_update`."""

    code = "EMA903"
    name = "test-data"

    def visit_Attribute(self, node: cst.Attribute) -> None:
        if node.attr.value == "data" and isinstance(node.value, cst.Name):
            owner = node.value.value
            self.report(
                node,
                f"`{owner}.data` bypasses autograd",
                fix=Fix(
                    f"Use `{owner}.detach()`",
                    Applicability.UNSAFE,
                    (self.edit_replacing(node, f"{owner}.detach()"),),
                    (RequiredImport("ema_lint.runtime", "ema_update"),),
                ),
            )


class LibraryCheckpoint(_TestRule):
    """`checkpoint_seq(...)`: help only (DISPLAY_ONLY)."""

    code = "EMA904"
    name = "test-library-checkpoint"

    def visit_Call(self, node: cst.Call) -> None:
        if isinstance(node.func, cst.Name) and node.func.value == "checkpoint_seq":
            self.report(
                node,
                "`checkpoint_seq` recomputes running statistics",
                fix=Fix("Call `convert_running_stats(model)` once", Applicability.DISPLAY_ONLY),
            )


class GrowingName(_TestRule):
    """Every name starting with `grow` gets one more `w`: never converges."""

    code = "EMA905"
    name = "test-growing"

    def visit_Name(self, node: cst.Name) -> None:
        if node.value.startswith("grow"):
            self.report(
                node,
                f"`{node.value}` grows",
                fix=Fix("Grow", Applicability.SAFE, (self.edit_replacing(node, node.value + "w"),)),
            )


class ReplaceWithSame(_TestRule):
    """`same` is reported and "fixed" to itself: the fix does not remove its finding."""

    code = "EMA906"
    name = "test-same"

    def visit_Name(self, node: cst.Name) -> None:
        if node.value == "same":
            self.report(
                node, "`same` stays", fix=Fix("Keep", Applicability.SAFE, (self.edit_replacing(node, "same"),))
            )


class BreakSyntax(_TestRule):
    """`breakme` -> `breakme(`: the fixed source does not parse."""

    code = "EMA907"
    name = "test-break-syntax"

    def visit_Name(self, node: cst.Name) -> None:
        if node.value == "breakme":
            self.report(
                node, "`breakme`", fix=Fix("Break", Applicability.SAFE, (self.edit_replacing(node, "breakme("),))
            )


class ReturnAtModuleLevel(_TestRule):
    """Module-level `pass` -> `return`: parses with libcst, but `compile()` rejects it."""

    code = "EMA908"
    name = "test-break-compile"

    def visit_Module(self, node: cst.Module) -> None:
        for statement in node.body:
            if isinstance(statement, cst.SimpleStatementLine) and isinstance(statement.body[0], cst.Pass):
                self.report(
                    statement.body[0],
                    "module-level `pass`",
                    fix=Fix("Return", Applicability.SAFE, (self.edit_replacing(statement.body[0], "return"),)),
                )


class MultiLineInsert(_TestRule):
    """`ema.step()` -> a two-line `with torch.no_grad():` block: the edit holds `\\n`."""

    code = "EMA909"
    name = "test-multi-line"

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> None:
        body = node.body[0]
        if (
            isinstance(body, cst.Expr)
            and isinstance(body.value, cst.Call)
            and isinstance(body.value.func, cst.Attribute)
            and body.value.func.attr.value == "step_ema"
        ):
            self.report(
                node,
                "`step_ema` outside `no_grad`",
                fix=Fix(
                    "Wrap in `torch.no_grad()`",
                    Applicability.SAFE,
                    (self.edit_replacing(body, "with torch.no_grad():\n    ema.update_()"),),
                    (RequiredImport("torch"),),
                ),
            )
