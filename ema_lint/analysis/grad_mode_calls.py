"""Which functions a file calls with gradient recording on, and which only with it off.

An EMA helper (`soft_update(target, source, tau)`, `update_average(g_ema, g, beta)`) keeps no
history when every call of it runs under `torch.no_grad()`, and those calls are usually in
another file (the trainer). Phase 1 records, per file, the last name of every callee
(`soft_update` for `TorchUtils.soft_update(...)`) by the grad mode at the call: a call is
grad-off inside a `no_grad`/`inference_mode`/`set_grad_enabled(False)` block or a function
decorated with one. A function body nested in such a block runs when it is called, so its
calls start grad-on again. Names, not resolved targets: a same-named call elsewhere counts
as a call of the helper, which can only keep a finding.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from ema_lint.analysis.graph_free import turns_grad_off


@dataclass(frozen=True)
class GradModeCalls:
    grad_on: frozenset[str]
    grad_off: frozenset[str]


def grad_mode_calls(tree: ast.Module) -> GradModeCalls:
    visitor = _CallsByGradMode()
    visitor.visit(tree)
    return GradModeCalls(frozenset(visitor.grad_on), frozenset(visitor.grad_off - visitor.grad_on))


class _CallsByGradMode(ast.NodeVisitor):
    def __init__(self) -> None:
        self.grad_on: set[str] = set()
        self.grad_off: set[str] = set()
        self.off_depth = 0

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        saved, self.off_depth = self.off_depth, int(any(turns_grad_off(d) for d in node.decorator_list))
        for statement in node.body:
            self.visit(statement)
        self.off_depth = saved

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        saved, self.off_depth = self.off_depth, 0
        self.visit(node.body)
        self.off_depth = saved

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item)
        off = int(any(turns_grad_off(item.context_expr) for item in node.items))
        self.off_depth += off
        for statement in node.body:
            self.visit(statement)
        self.off_depth -= off

    visit_AsyncWith = visit_With

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name is not None:
            (self.grad_off if self.off_depth else self.grad_on).add(name)
        self.generic_visit(node)
