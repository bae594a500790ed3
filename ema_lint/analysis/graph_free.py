"""Which functions return values that hold no autograd history, read from the stdlib `ast`
(phase 1, for every checked module): a function that runs with gradients off, or whose
every returned value is built only from values that cannot carry a graph. That is what
makes `acc1, acc5 = accuracy(output, target, topk=(1, 5))` a pair of plain numbers, in the
`with torch.no_grad():` spelling and in the older one built on `topk` indices and `eq`.
"""

from __future__ import annotations

import ast

from ema_lint.analysis.torch_names import (
    GRAD_OFF_CONTEXTS,
    HISTORY_CUTTING_METHODS,
    SCALAR_CASTS,
    SHAPE_METHODS,
)

# Methods whose result never carries a graph, whatever their receiver and arguments:
# comparisons, index and sign functions, integer and boolean casts.
NON_DIFFERENTIABLE_METHODS = frozenset(
    {"eq", "ne", "lt", "le", "gt", "ge", "equal", "argmax", "argmin", "argsort", "nonzero", "long", "int", "bool"}
) | HISTORY_CUTTING_METHODS | SHAPE_METHODS
# Methods returning `(values, indices)`: the second element is integer positions.
VALUES_AND_INDICES = frozenset({"topk", "max", "min", "sort", "kthvalue", "mode", "median"})
_FREE = ast.Constant(None)  # stands for a value known to carry no graph
_UNKNOWN = ast.Name("<unknown>")  # stands for a value this reading cannot see (a parameter)


def grad_mode(expression: ast.expr) -> bool | None:
    """False for a context or decorator that turns gradient recording off (`torch.no_grad()`,
    `inference_mode()`, `set_grad_enabled(False)`), True for one that turns it on
    (`enable_grad()`, `set_grad_enabled(True)`, `inference_mode(False)`), else None."""
    target = expression.func if isinstance(expression, ast.Call) else expression
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    first = expression.args[0] if isinstance(expression, ast.Call) and expression.args else None
    flag = first.value if isinstance(first, ast.Constant) else None
    if name in GRAD_OFF_CONTEXTS:
        # `inference_mode(False)` is the one spelling that turns recording back on
        return name == "inference_mode" and flag is False
    if name == "enable_grad":
        return True
    if name == "set_grad_enabled" and isinstance(flag, bool):
        return flag
    return None


def turns_grad_off(expression: ast.expr) -> bool:
    return grad_mode(expression) is False


def returns_no_graph(function: ast.FunctionDef | ast.AsyncFunctionDef, numeric_names: frozenset[str] = frozenset()) -> bool:
    """Every value `function` returns holds no autograd history: each `return` with a value
    returns a new value made with gradients off (a decorator or a `with`, not undone by
    `enable_grad`), or a value made only of graph-free values (see `_GraphFree`).
    `numeric_names`: the module's names for NumPy-like libraries (`np`, `mean` from
    `numpy`), whose results are never torch tensors (NumPy refuses a tensor that requires
    grad)."""
    decorated_off = any(turns_grad_off(decorator) for decorator in function.decorator_list)
    parameters = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
    parameters += [a for a in (function.args.vararg, function.args.kwarg) if a is not None]
    returns: list[tuple[ast.expr, bool]] = []
    # a parameter holds whatever the caller passes: never graph-free, whatever it is rebound to
    bindings: dict[str, list[ast.expr]] = {a.arg: [_UNKNOWN] for a in parameters}

    def visit(statements: list[ast.stmt], grad_off: bool) -> None:
        for statement in statements:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(statement, ast.Return):
                if statement.value is not None:
                    returns.append((statement.value, grad_off))
                continue
            _bind(statement, bindings, grad_off)
            off = grad_off
            if isinstance(statement, (ast.With, ast.AsyncWith)):
                modes = [grad_mode(item.context_expr) for item in statement.items]
                off = False if True in modes else (grad_off or False in modes)
            for field_name in ("body", "orelse", "finalbody"):
                block = getattr(statement, field_name, None)
                if isinstance(block, list):
                    visit(block, off)
            for clause in (*getattr(statement, "handlers", ()), *getattr(statement, "cases", ())):
                visit(clause.body, off)

    visit(function.body, decorated_off)
    if not returns:
        return False
    free = _GraphFree(bindings, numeric_names)
    # under grad-off a new value has no history, but a returned name may alias an older one
    return all((grad_off and not _aliases(value)) or free.expression(value) for value, grad_off in returns)


def _aliases(value: ast.expr) -> bool:
    """A value that may be an existing tensor rather than a new one: a name, an attribute,
    an item, a conditional or a container of such."""
    if isinstance(value, (ast.Name, ast.Attribute, ast.Subscript, ast.Starred)):
        return True
    if isinstance(value, ast.IfExp):
        return _aliases(value.body) or _aliases(value.orelse)
    if isinstance(value, (ast.Tuple, ast.List, ast.Set)):
        return any(_aliases(element) for element in value.elts)
    if isinstance(value, ast.Dict):
        return any(_aliases(element) for element in value.values)
    return False


def _as_load(target: ast.expr) -> ast.expr:
    return ast.Name(target.id) if isinstance(target, ast.Name) else target


def _bind(statement: ast.stmt, bindings: dict[str, list[ast.expr]], grad_off: bool) -> None:
    """Record what `statement` gives each local name (a value made under grad-off counts as
    graph-free unless it is a bare name, which only aliases)."""

    def bind(target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            made_without_graph = grad_off and not _aliases(value)
            bindings.setdefault(target.id, []).append(_FREE if made_without_graph else value)
        elif isinstance(target, (ast.Subscript, ast.Attribute)):
            # `losses[0] = criterion(...)`, `state.x = ...`: the container holds the value
            owner = target.value
            while isinstance(owner, (ast.Subscript, ast.Attribute)):
                owner = owner.value
            if isinstance(owner, ast.Name):
                bindings.setdefault(owner.id, []).append(value)
        elif isinstance(target, ast.Starred):
            bind(target.value, value)
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
    elif isinstance(statement, ast.AugAssign):
        # `loss *= 0.5` keeps what `loss` held
        bind(statement.target, ast.BinOp(_as_load(statement.target), statement.op, statement.value))
    elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
        bind(statement.target, statement.value)
    elif isinstance(statement, (ast.With, ast.AsyncWith)):
        for item in statement.items:
            if item.optional_vars is not None:
                bind(item.optional_vars, _UNKNOWN)
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


# builtins that give back a value of their arguments' kind: `sum` of an array is a NumPy
# number, `sum` of tensors a tensor with their history
_KIND_KEEPING_BUILTINS = frozenset({"abs", "sum", "min", "max"})


class _GraphFree:
    """The local names that can only hold graph-free values: the greatest set where every
    binding of every name is graph-free given the set (parameters and globals are not)."""

    def __init__(self, bindings: dict[str, list[ast.expr]], numeric_names: frozenset[str] = frozenset()):
        self.bindings = bindings
        self.numeric_names = numeric_names
        self.names = set(bindings)
        # a name bound where this reading does not look (a walrus, a comprehension, `global`)
        self.names -= _bound_elsewhere(bindings)
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
        if node is _UNKNOWN:
            return False
        if isinstance(node, ast.Name):
            return node.id in self.names
        if isinstance(node, (ast.Tuple, ast.List)):
            return all(self.expression(element) for element in node.elts)
        if isinstance(node, ast.Dict):
            return all(self.expression(value) for value in node.values)
        if isinstance(node, (ast.DictComp, ast.ListComp, ast.SetComp)):
            # `{k: v.item() for k, v in stats.items()}`: the names the comprehension binds
            # hold its iterable's items, so only elements cut whatever they read pass
            own = {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
            outer, self.names = self.names, self.names - own
            try:
                return self.expression(node.value if isinstance(node, ast.DictComp) else node.elt)
            finally:
                self.names = outer
        if isinstance(node, ast.Subscript):
            return self.expression(node.value)
        if isinstance(node, ast.BinOp):
            return self.expression(node.left) and self.expression(node.right)
        if isinstance(node, ast.UnaryOp):
            return self.expression(node.operand)
        if isinstance(node, ast.Call):
            function = node.func
            root = function
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in self.numeric_names:
                return True  # `np.mean(ious)`
            if isinstance(function, ast.Name):
                if function.id in _KIND_KEEPING_BUILTINS:
                    return bool(node.args) and all(self.expression(a) for a in node.args)
                return function.id in SCALAR_CASTS
            if isinstance(function, ast.Attribute):
                if function.attr in NON_DIFFERENTIABLE_METHODS:
                    return True
                return self.expression(function.value) and all(self.expression(a) for a in node.args)
        return False


def _bound_elsewhere(bindings: dict[str, list[ast.expr]]) -> set[str]:
    """Names an expression binds (`(x := f())`): their values are not in `bindings`."""
    found = set()
    for values in bindings.values():
        for value in values:
            for node in ast.walk(value):
                if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
                    found.add(node.target.id)
    return found
