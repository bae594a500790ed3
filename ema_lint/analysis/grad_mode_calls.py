"""Which functions a file calls with gradient recording on, and which only with it off.

An EMA helper (`soft_update(target, source, tau)`, `update_average(g_ema, g, beta)`) keeps no
history when every call of it runs under `torch.no_grad()`, and those calls are usually in
another file (the trainer). Phase 1 records, per file, the last name of every callee
(`soft_update` for `TorchUtils.soft_update(...)`) by the grad mode at the call: a call is
grad-off inside a `no_grad`/`inference_mode`/`set_grad_enabled(False)` block or a function
decorated with one, unless `enable_grad()` turns recording back on inside. A function body
nested in such a block runs when it is called, so its calls start grad-on again. A function
referenced without being called (stored, passed as a callback) counts as called grad-on.
Names, not resolved targets (an imported alias counts under the imported name too): a
same-named call elsewhere counts as a call of the helper, which can only keep a finding.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from ema_lint.analysis.graph_free import grad_mode


@dataclass(frozen=True)
class GradModeCalls:
    grad_on: frozenset[str]
    grad_off: frozenset[str]


def grad_mode_calls(tree: ast.Module, imports: dict[str, str]) -> GradModeCalls:
    """`imports`: the file's local names -> fully qualified names."""
    visitor = _CallsByGradMode({local: qualified.rpartition(".")[2] for local, qualified in imports.items()})
    visitor.visit(tree)
    return GradModeCalls(frozenset(visitor.grad_on), frozenset(visitor.grad_off - visitor.grad_on))


class _CallsByGradMode(ast.NodeVisitor):
    def __init__(self, imported: dict[str, str]) -> None:
        # local name -> the imported function's own name (`soft_update as update_target`)
        self.imported = imported
        self.grad_on: set[str] = set()
        self.grad_off: set[str] = set()
        self.called: set[int] = set()
        self.off = False

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        saved, self.off = self.off, _turns(node.decorator_list, False)
        for statement in node.body:
            self.visit(statement)
        self.off = saved

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        saved, self.off = self.off, False
        self.visit(node.body)
        self.off = saved

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item)
        saved, self.off = self.off, _turns([item.context_expr for item in node.items], self.off)
        for statement in node.body:
            self.visit(statement)
        self.off = saved

    visit_AsyncWith = visit_With

    def visit_Call(self, node: ast.Call) -> None:
        name = _last_name(node.func)
        if name is not None:
            (self.grad_off if self.off else self.grad_on).add(self.imported.get(name, name))
            self.called.add(id(node.func))
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        # a function handed on (`self.ema_updater = update_average`, a callback) runs where
        # it is called, unknown here: counted as called with gradients on
        if isinstance(node.ctx, ast.Load) and id(node) not in self.called:
            self.grad_on.add(self.imported.get(node.id, node.id))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load) and id(node) not in self.called:
            self.grad_on.add(node.attr)
        self.generic_visit(node)


def _turns(contexts: list[ast.expr], off: bool) -> bool:
    """Whether gradients are off inside these contexts or decorators, `off` outside them
    (`enable_grad()` and `set_grad_enabled(True)` turn them back on)."""
    for context in contexts:
        mode = grad_mode(context)
        if mode is not None:
            off = not mode
    return off


def _last_name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
