"""Which functions return values that hold no autograd history, read from the stdlib `ast`
(phase 1, for every checked module): a function that runs with gradients off, or whose
every returned value is built only from values that cannot carry a graph. That is what
makes `acc1, acc5 = accuracy(output, target, topk=(1, 5))` a pair of plain numbers, in the
`with torch.no_grad():` spelling and in the older one built on `topk` indices and `eq`.
"""

from __future__ import annotations

import ast

from ema_lint.analysis.torch_names import CUT_METHODS, GRAD_OFF_CONTEXTS, SCALAR_CASTS, SHAPE_METHODS

# Methods whose result never carries a graph, whatever their receiver and arguments:
# comparisons, index and sign functions, integer and boolean casts.
NON_DIFFERENTIABLE_METHODS = frozenset(
    {"eq", "ne", "lt", "le", "gt", "ge", "equal", "argmax", "argmin", "argsort", "nonzero", "sign", "long", "int", "bool"}
) | CUT_METHODS | SHAPE_METHODS
# Methods returning `(values, indices)`: the second element is integer positions.
VALUES_AND_INDICES = frozenset({"topk", "max", "min", "sort", "kthvalue", "mode", "median"})
_FREE = ast.Constant(None)  # stands for a value known to carry no graph


def turns_grad_off(expression: ast.expr) -> bool:
    """`torch.no_grad()`, `no_grad`, `torch.inference_mode()`, `torch.set_grad_enabled(False)`."""
    target = expression.func if isinstance(expression, ast.Call) else expression
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    if name in GRAD_OFF_CONTEXTS:
        return True
    return (
        name == "set_grad_enabled"
        and isinstance(expression, ast.Call)
        and bool(expression.args)
        and isinstance(expression.args[0], ast.Constant)
        and expression.args[0].value is False
    )


def returns_no_graph(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Every value `function` returns holds no autograd history: it runs with gradients off
    (a decorator), or each `return` with a value sits under a grad-off `with` or returns a
    value made only of graph-free values (see `_GraphFree`)."""
    if any(turns_grad_off(decorator) for decorator in function.decorator_list):
        return True
    returns: list[tuple[ast.expr, bool]] = []
    bindings: dict[str, list[ast.expr]] = {}

    def visit(statements: list[ast.stmt], grad_off: bool) -> None:
        for statement in statements:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(statement, ast.Return):
                if statement.value is not None:
                    returns.append((statement.value, grad_off))
                continue
            _bind(statement, bindings, grad_off)
            off = grad_off or (
                isinstance(statement, (ast.With, ast.AsyncWith))
                and any(turns_grad_off(item.context_expr) for item in statement.items)
            )
            for field_name in ("body", "orelse", "finalbody"):
                block = getattr(statement, field_name, None)
                if isinstance(block, list):
                    visit(block, off)
            for clause in (*getattr(statement, "handlers", ()), *getattr(statement, "cases", ())):
                visit(clause.body, off)

    visit(function.body, False)
    if not returns:
        return False
    free = _GraphFree(bindings)
    return all(grad_off or free.expression(value) for value, grad_off in returns)


def _bind(statement: ast.stmt, bindings: dict[str, list[ast.expr]], grad_off: bool) -> None:
    """Record what `statement` gives each local name (a value made under grad-off counts as
    graph-free unless it is a bare name, which only aliases)."""

    def bind(target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            made_without_graph = grad_off and not isinstance(value, (ast.Name, ast.Attribute))
            bindings.setdefault(target.id, []).append(_FREE if made_without_graph else value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            elements = target.elts
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(elements):
                for element, item in zip(elements, value.elts):
                    bind(element, item)
                return
            indices = (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Attribute)
                and value.func.attr in VALUES_AND_INDICES
                and len(elements) == 2
            )
            for position, element in enumerate(elements):
                bind(element, _FREE if indices and position == 1 else value)

    if isinstance(statement, ast.Assign):
        for target in statement.targets:
            bind(target, statement.value)
    elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)) and statement.value is not None:
        if isinstance(statement.target, ast.Name):
            bindings.setdefault(statement.target.id, []).append(statement.value)
    elif isinstance(statement, (ast.For, ast.AsyncFor)):
        bind(statement.target, statement.iter)
    elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        call = statement.value
        # `res.append(v)`, `res.extend(vs)`: the list holds what is put in it
        if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) and call.func.attr in (
            "append",
            "extend",
            "insert",
        ):
            bindings.setdefault(call.func.value.id, []).extend(call.args)


class _GraphFree:
    """The local names that can only hold graph-free values: the greatest set where every
    binding of every name is graph-free given the set (parameters and globals are not)."""

    def __init__(self, bindings: dict[str, list[ast.expr]]):
        self.bindings = bindings
        self.names = set(bindings)
        changed = True
        while changed:
            changed = False
            for name in list(self.names):
                if not all(self.expression(value) for value in bindings[name]):
                    self.names.discard(name)
                    changed = True

    def expression(self, node: ast.expr) -> bool:
        if node is _FREE or isinstance(node, (ast.Constant, ast.Compare, ast.JoinedStr)):
            return True
        if isinstance(node, ast.Name):
            return node.id in self.names
        if isinstance(node, (ast.Tuple, ast.List)):
            return all(self.expression(element) for element in node.elts)
        if isinstance(node, ast.Subscript):
            return self.expression(node.value)
        if isinstance(node, ast.BinOp):
            return self.expression(node.left) and self.expression(node.right)
        if isinstance(node, ast.UnaryOp):
            return self.expression(node.operand)
        if isinstance(node, ast.Call):
            function = node.func
            if isinstance(function, ast.Name):
                return function.id in SCALAR_CASTS
            if isinstance(function, ast.Attribute):
                if function.attr in NON_DIFFERENTIABLE_METHODS:
                    return True
                return self.expression(function.value) and all(self.expression(a) for a in node.args)
        return False
