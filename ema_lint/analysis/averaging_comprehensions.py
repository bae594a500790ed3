"""Weight averages of models built one tensor at a time in a comprehension.

Model soups, WiSE-FT interpolation, model merging and averages of saved checkpoints spell a
weighted sum of two models' tensors as a comprehension over a state dict:
`{k: sd0[k] * (1 - alpha) + sd1[k] * alpha for k in sd0}`,
`{k: v * (1 / n) + soup[k] for k, v in state_dict.items()}`. The question asked is
structural, as for loops (`model_ema_loops`): the element adds at least two tensors that
change with the iteration (a value the comprehension binds, or a lookup keyed by one), at
least one of them weighed by a factor that does not change with it. A sum without weights
(`a[k] + b[k]`) or a difference (task vectors) is no average. The tensors must come from a
model: one of the mappings read is bound in the same scope to a `state_dict()`,
`torch.load(...)`, a module's `named_parameters()`/`named_buffers()`, or to another such
comprehension, so smoothed logging dicts of numbers stay silent.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from ema_lint.analysis.expressions import attribute_name, names_in, strip_parens
from ema_lint.analysis.names import dotted_text
from ema_lint.analysis.torch_names import RETYPING_METHODS

# Calls whose result is a model's tensors by name.
_MODEL_TENSOR_SOURCES = frozenset({"state_dict", "named_parameters", "named_buffers", "parameters", "buffers"})
# Methods that hand back the same tensor, copied or moved: `sd[k].clone().float()`.
_SAME_TENSOR_METHODS = RETYPING_METHODS | {"clone", "detach"}


@dataclass(frozen=True, eq=False)
class AveragingComprehension:
    node: cst.DictComp | cst.ListComp
    iterable: cst.BaseExpression


def averaging_comprehensions(module: cst.Module) -> list[AveragingComprehension]:
    finder = _Finder()
    module.visit(finder)
    return [
        AveragingComprehension(found.node, found.iterable)
        for found, scope in finder.candidates
        if _from_a_model(found, scope, set())
    ]


@dataclass(eq=False)
class _Scope:
    # every value assigned to a plain name in the function (or module) body
    assigned: dict[str, list[cst.BaseExpression]]


class _Finder(cst.CSTVisitor):
    def __init__(self) -> None:
        self.scopes = [_Scope({})]
        self.candidates: list[tuple[_Candidate, _Scope]] = []

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.scopes.append(_Scope({}))

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.scopes.pop()

    def visit_Assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            if isinstance(target.target, cst.Name):
                self.scopes[-1].assigned.setdefault(target.target.value, []).append(node.value)

    def visit_DictComp(self, node: cst.DictComp) -> None:
        self._consider(node, node.value)

    def visit_ListComp(self, node: cst.ListComp) -> None:
        self._consider(node, node.elt)

    def _consider(self, node: cst.DictComp | cst.ListComp, element: cst.BaseExpression) -> None:
        loop = node.for_in
        if loop.inner_for_in is not None:
            return
        bound = names_in(loop.target)
        operands = _weighted_operands(element, bound)
        if operands is not None:
            self.candidates.append((_Candidate(node, loop.iter, bound, operands), self.scopes[-1]))


@dataclass(frozen=True, eq=False)
class _Candidate:
    node: cst.DictComp | cst.ListComp
    iterable: cst.BaseExpression
    bound: set[str]
    # the mappings (or iterables) the per-iteration tensors are read from
    operands: list[cst.BaseExpression]


def _weighted_operands(element: cst.BaseExpression, bound: set[str]) -> list[cst.BaseExpression] | None:
    """The per-iteration tensors `element` averages, when it is a weighted sum of two or more
    of them; None otherwise."""
    terms = _terms(strip_parens(element))
    if terms is None or len(terms) < 2:
        return None
    read: list[cst.BaseExpression] = []
    weighed = False
    for term in terms:
        tensors, weights = [], []
        for factor in _factors(term):
            (tensors if names_in(factor) & bound else weights).append(factor)
        if len(tensors) != 1:
            return None
        source = _per_iteration_source(tensors[0], bound)
        if source is None:
            return None
        read.append(source)
        weighed |= bool(weights)
    return read if weighed else None


def _terms(node: cst.BaseExpression) -> list[cst.BaseExpression] | None:
    """The added terms of `a * w + b * (1 - w)`; None when the sum subtracts (a difference of
    models, `ft[k] - base[k]`, is a task vector, not an average)."""
    if isinstance(node, cst.BinaryOperation):
        if isinstance(node.operator, cst.Add):
            left, right = _terms(strip_parens(node.left)), _terms(strip_parens(node.right))
            return None if left is None or right is None else left + right
        if isinstance(node.operator, cst.Subtract):
            return None
    return [node]


def _factors(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    node = strip_parens(node)
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, (cst.Multiply, cst.Divide)):
        # `v / n`: the divisor weighs `v` as a factor does
        return _factors(node.left) + _factors(node.right)
    return [node]


def _per_iteration_source(node: cst.BaseExpression, bound: set[str]) -> cst.BaseExpression | None:
    """`sd[k]`, `v` or `sd[k].clone().float()` for a name `k`/`v` the comprehension binds: the
    mapping or the bound name the tensor is read from."""
    node = strip_parens(node)
    while isinstance(node, cst.Call) and attribute_name(node.func) in _SAME_TENSOR_METHODS:
        node = strip_parens(node.func.value)
    while isinstance(node, cst.Attribute) and node.attr.value == "data":
        node = strip_parens(node.value)
    if isinstance(node, cst.Name):
        return node if node.value in bound else None
    if (
        isinstance(node, cst.Subscript)
        and len(node.slice) == 1
        and isinstance(node.slice[0].slice, cst.Index)
        and isinstance(strip_parens(node.slice[0].slice.value), cst.Name)
        and strip_parens(node.slice[0].slice.value).value in bound
        and not (names_in(node.value) & bound)
    ):
        return node.value
    return None


def _from_a_model(candidate: _Candidate, scope: _Scope, seen: set[str]) -> bool:
    """Some tensor the comprehension reads comes from a model: directly, through the
    iterable (`for k, v in sd.items()`), or through a name the scope binds to one."""
    return any(_model_tensors(node, scope, seen) for node in [*candidate.operands, candidate.iterable])


def _model_tensors(node: cst.BaseExpression, scope: _Scope, seen: set[str]) -> bool:
    node = strip_parens(node)
    if isinstance(node, cst.Call):
        name = attribute_name(node.func)
        if name in _MODEL_TENSOR_SOURCES or dotted_text(node.func) == "torch.load":
            return True
        if name in ("items", "keys", "values") and isinstance(node.func, cst.Attribute):
            return _model_tensors(node.func.value, scope, seen)
        if name in ("dict", "zip", "list") and isinstance(node.func, cst.Name):
            return any(_model_tensors(argument.value, scope, seen) for argument in node.args)
        return False
    if isinstance(node, (cst.DictComp, cst.ListComp)):
        return _model_tensors(node.for_in.iter, scope, seen)
    if isinstance(node, cst.Name) and node.value not in seen:
        seen.add(node.value)
        return any(_model_tensors(value, scope, seen) for value in scope.assigned.get(node.value, ()))
    return False
