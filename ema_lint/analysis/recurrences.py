"""EMA and accumulation shapes: `state <- decay * state + weight * sample` in its spellings
(`Recurrence`), and values added to an accumulator (`Accumulation`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst
import libcst.matchers as m

from ema_lint.analysis.expressions import (
    attribute_name,
    moving_index,
    names_and_attributes,
    strip_parens,
    whole_tensor,
)
from ema_lint.analysis.function_facts import Site

if TYPE_CHECKING:
    from ema_lint.analysis.value_flow import FileFacts

@dataclass(eq=False)
class Recurrence:
    """`state <- decay * state + weight * sample` in one of its spellings."""

    site: Site
    state: cst.BaseExpression
    sample: cst.BaseExpression
    # the whole part that is not the state; a cut anywhere in it is a cut of the update
    new_term: cst.BaseExpression
    form: str
    decay: cst.BaseExpression | None = None
    weight: cst.BaseExpression | None = None
    # keyword `alpha=` of `add_`, which fixes the spelling of an exact rewrite
    alpha: cst.BaseExpression | None = None

    @property
    def statement(self) -> cst.BaseSmallStatement:
        return self.site.statement


def _factors(node: cst.BaseExpression) -> tuple[cst.BaseExpression, cst.BaseExpression] | None:
    """The two factors of `a * b` or `a.mul(b)`."""
    node = strip_parens(node)
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply):
        return node.left, node.right
    if (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Attribute)
        and node.func.attr.value == "mul"
        and len(node.args) == 1
        and node.args[0].keyword is None
    ):
        return node.func.value, node.args[0].value
    return None


def _is_one_minus(node: cst.BaseExpression) -> bool:
    node = strip_parens(node)
    return (
        isinstance(node, cst.BinaryOperation)
        and isinstance(node.operator, cst.Subtract)
        and isinstance(node.left, (cst.Integer, cst.Float))
        and float(node.left.value) == 1.0
    )


def _scaling(statement: cst.BaseSmallStatement) -> tuple[cst.BaseExpression, cst.BaseExpression] | None:
    """(state, decay) for `state *= decay` or `state.mul_(decay)`."""
    if isinstance(statement, cst.AugAssign) and isinstance(statement.operator, cst.MultiplyAssign):
        return statement.target, statement.value
    if m.matches(statement, m.Expr(value=m.Call(func=m.Attribute(attr=m.Name("mul_")), args=[m.Arg(keyword=None)]))):
        return statement.value.func.value, statement.value.args[0].value
    return None


class _Shapes:
    """Recognises the spellings of an EMA step, comparing sub-expressions by their code."""

    def __init__(self, facts: FileFacts) -> None:
        self.facts = facts

    def same(self, node: cst.CSTNode, code: str) -> bool:
        return self.facts.code(strip_parens(node)) == code

    def mentions(self, node: cst.CSTNode, code: str) -> bool:
        return any(self.facts.code(n) == code for n in names_and_attributes(node))

    def _coefficient_like(self, factor: cst.BaseExpression, decay: cst.BaseExpression | None) -> bool:
        factor = strip_parens(factor)
        if isinstance(factor, (cst.Integer, cst.Float)) or _is_one_minus(factor):
            return True
        if decay is None:
            return False
        # `(1 - m) * state + m * x`: the sample's weight names the decay or is named by it
        return self.mentions(factor, self.facts.code(strip_parens(decay))) or (
            isinstance(factor, (cst.Name, cst.Attribute)) and self.mentions(decay, self.facts.code(factor))
        )

    def split_term(self, term: cst.BaseExpression, decay: cst.BaseExpression | None):
        """(weight, sample) of `weight * sample` / `sample * weight`; (None, term) otherwise."""
        factors = _factors(term)
        if factors is not None:
            left, right = factors
            if self._coefficient_like(left, decay):
                return left, right
            if self._coefficient_like(right, decay):
                return right, left
        return None, term

    def _scaled_state(self, node: cst.BaseExpression, state: str) -> cst.BaseExpression | None:
        factors = _factors(node)
        if factors is None:
            return None
        left, right = factors
        if self.same(left, state) and not self.mentions(right, state):
            return right
        if self.same(right, state) and not self.mentions(left, state):
            return left
        return None

    def _difference_scaled(self, node: cst.BaseExpression, first: str | None, second: str | None):
        """(weight, other) for `weight * (a - b)` where `a` or `b` is given by code."""
        factors = _factors(node)
        if factors is None:
            return None
        for weight, difference in (factors, factors[::-1]):
            difference = strip_parens(difference)
            if not (
                isinstance(difference, cst.BinaryOperation)
                and isinstance(difference.operator, cst.Subtract)
            ):
                continue
            if first is not None and self.same(difference.left, first):
                return weight, difference.right
            if second is not None and self.same(difference.right, second):
                return weight, difference.left
        return None

    def value_recurrence(self, value: cst.BaseExpression, state: str):
        """(form, decay, weight, sample, new_term) when `value` is an EMA step of `state`."""
        value = strip_parens(value)
        if isinstance(value, cst.IfExp):
            # `x if avg is None else lerp(avg, x, w)`: the branch that is a step
            return self.value_recurrence(value.body, state) or self.value_recurrence(value.orelse, state)
        if isinstance(value, cst.Call):
            name = attribute_name(value.func)
            args = [a.value for a in value.args]
            if name == "lerp" and isinstance(value.func, cst.Attribute):
                receiver = value.func.value
                if len(args) == 3 and attribute_name(receiver) == "torch" and self.same(args[0], state):
                    return "lerp", None, args[2], args[1], args[1]
                if len(args) == 2 and self.same(receiver, state):
                    return "lerp", None, args[1], args[0], args[0]
            return None
        if not isinstance(value, cst.BinaryOperation):
            return None
        if isinstance(value.operator, cst.Add):
            for scaled, term in ((value.left, value.right), (value.right, value.left)):
                decay = self._scaled_state(scaled, state)
                if decay is not None and not self.mentions(term, state):
                    weight, sample = self.split_term(term, decay)
                    return "affine", decay, weight, sample, term
            if self.same(value.left, state):
                found = self._difference_scaled(value.right, None, state)
                if found is not None:
                    return "toward", None, found[0], found[1], value.right
        if isinstance(value.operator, cst.Subtract) and self.same(value.left, state):
            found = self._difference_scaled(value.right, state, None)
            if found is not None:
                return "toward", None, found[0], found[1], value.right
        return None

    def statement_recurrence(self, site: Site) -> Recurrence | None:
        statement = site.statement
        if isinstance(statement, cst.Assign) and len(statement.targets) == 1 and isinstance(
            strip_parens(statement.value), (cst.BinaryOperation, cst.Call, cst.IfExp)
        ):
            state = strip_parens(statement.targets[0].target)
            if isinstance(state, cst.Subscript) and whole_tensor(state):
                state = strip_parens(state.value)  # `avg[:] = d * avg + ...` writes `avg` itself
            found = self.value_recurrence(statement.value, self.facts.code(state))
            if found is not None:
                return Recurrence(site, state, found[3], found[4], found[0], found[1], found[2])
        elif isinstance(statement, cst.AugAssign):
            state = self.facts.code(strip_parens(statement.target))
            scaled = _scaling(site.follows.statement) if site.follows is not None else None
            if (
                isinstance(statement.operator, cst.AddAssign)
                and scaled is not None
                and self.facts.code(strip_parens(scaled[0])) == state
                and not self.mentions(statement.value, state)
            ):
                weight, sample = self.split_term(statement.value, scaled[1])
                return Recurrence(site, statement.target, sample, statement.value, "mul_add", scaled[1], weight)
            if isinstance(statement.operator, cst.AddAssign):
                found = self._difference_scaled(statement.value, None, state)
            elif isinstance(statement.operator, cst.SubtractAssign):
                found = self._difference_scaled(statement.value, state, None)
            else:
                found = None
            if found is not None:
                return Recurrence(site, statement.target, found[1], statement.value, "toward", None, found[0])
        elif isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call):
            return self._in_place(site, statement.value)
        return None

    def _scaled_then_added(
        self, site: Site, state: cst.BaseExpression, decay: cst.BaseExpression | None, add: cst.Call
    ) -> Recurrence | None:
        """`state.mul_(decay)` followed by `add_(term)`, `add_(term, alpha=w)` or the deprecated
        `add_(w, term)`, chained or as two statements."""
        positional = [a.value for a in add.args if a.keyword is None]
        keywords = {a.keyword.value: a.value for a in add.args if a.keyword is not None}
        alpha = positional[0] if len(positional) == 2 else keywords.get("alpha")
        term = positional[-1]
        if decay is None or self.mentions(term, self.facts.code(strip_parens(state))):
            return None
        if alpha is not None:
            return Recurrence(site, state, term, term, "mul_add", decay, alpha, alpha)
        weight, sample = self.split_term(term, decay)
        return Recurrence(site, state, sample, term, "mul_add", decay, weight)

    def _in_place(self, site: Site, call: cst.Call) -> Recurrence | None:
        if not isinstance(call.func, cst.Attribute):
            return None
        method = call.func.attr.value
        receiver = call.func.value
        positional = [a.value for a in call.args if a.keyword is None]
        keywords = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
        if method == "add_" and len(positional) in (1, 2) and m.matches(
            receiver, m.Call(func=m.Attribute(attr=m.Name("mul_")))
        ):
            decay = receiver.args[0].value if len(receiver.args) == 1 else None
            return self._scaled_then_added(site, receiver.func.value, decay, call)
        code = self.facts.code(strip_parens(receiver))
        if method == "add_" and site.follows is not None:
            scaled = _scaling(site.follows.statement)
            if scaled is not None and self.facts.code(strip_parens(scaled[0])) == code:
                return self._scaled_then_added(site, receiver, scaled[1], call)
        if method == "lerp_" and positional:
            weight = positional[1] if len(positional) > 1 else keywords.get("weight")
            if weight is not None and not self.mentions(positional[0], code):
                return Recurrence(site, receiver, positional[0], positional[0], "lerp_", None, weight)
        if method in ("add_", "sub_") and len(positional) == 1 and not keywords:
            found = self._difference_scaled(
                positional[0], code if method == "sub_" else None, code if method == "add_" else None
            )
            if found is not None:
                return Recurrence(site, receiver, found[1], positional[0], "toward", None, found[0])
        if method == "copy_" and len(positional) == 1:
            found = self.value_recurrence(positional[0], code)
            if found is not None:
                return Recurrence(site, receiver, found[3], found[4], "copy_" + found[0], found[1], found[2])
            return self._copy_through_function(site, receiver, positional[0])
        return None

    def _copy_through_function(
        self, site: Site, state: cst.BaseExpression, value: cst.BaseExpression
    ) -> Recurrence | None:
        """`state.copy_(step(state, sample))` where `step` is a parameter of the enclosing method
        and some call of that method in the file passes a lambda that is an EMA step (timm's
        `ModelEmaV2._update(model, update_fn=lambda e, m: d * e + (1 - d) * m)`)."""
        function = site.function
        value = strip_parens(value)
        if not (isinstance(value, cst.Call) and isinstance(value.func, cst.Name)):
            return None
        step = value.func.value
        params = [p for p in function.params if p not in ("self", "cls")]
        arguments = [a.value for a in value.args if a.keyword is None]
        state_code = self.facts.code(strip_parens(state))
        positions = [i for i, a in enumerate(arguments) if self.facts.code(strip_parens(a)) == state_code]
        if step not in params or len(arguments) != 2 or len(positions) != 1:
            return None
        state_index = positions[0]
        for call in self.facts.calls:
            if call.callee != function.name or call.class_name != function.class_name:
                continue
            for index, arg in enumerate(call.args):
                bound = arg.keyword.value if arg.keyword is not None else (
                    params[index] if index < len(params) and not arg.star else None
                )
                lambda_ = arg.value
                if bound != step or not isinstance(lambda_, cst.Lambda):
                    continue
                names = [p.name.value for p in lambda_.params.params]
                if len(names) == 2 and self.value_recurrence(lambda_.body, names[state_index]) is not None:
                    sample = arguments[1 - state_index]
                    return Recurrence(site, state, sample, value, "copy_through_function")
        return None


@dataclass(eq=False)
class Accumulation:
    """`total += value`, `total = total + value`, `values.append(value)`, `total.add_(value)`."""

    site: Site
    accumulator: cst.BaseExpression
    value: cst.BaseExpression


def accumulation(facts: FileFacts, site: Site) -> Accumulation | None:
    statement = site.statement
    if isinstance(statement, cst.AugAssign) and isinstance(statement.operator, cst.AddAssign):
        return Accumulation(site, statement.target, statement.value)
    if (
        isinstance(statement, cst.Assign)
        and len(statement.targets) == 1
        and m.matches(strip_parens(statement.value), m.BinaryOperation(operator=m.Add()))
    ):
        target = statement.targets[0].target
        value = strip_parens(statement.value)
        code = facts.code(strip_parens(target))
        for own, other in ((value.left, value.right), (value.right, value.left)):
            if facts.code(strip_parens(own)) == code:
                return Accumulation(site, target, other)
        return None
    if isinstance(statement, cst.Expr) and m.matches(
        statement.value,
        m.Call(func=m.Attribute(attr=m.Name("append") | m.Name("extend") | m.Name("add_")), args=[m.Arg(keyword=None, star="")]),
    ):
        return Accumulation(site, statement.value.func.value, statement.value.args[0].value)
    if isinstance(statement, cst.Assign) and len(statement.targets) == 1:
        target = strip_parens(statement.targets[0].target)
        if isinstance(target, cst.Subscript) and moving_index(target):
            # `metrics_g[LOSS, start:end] = loss_g`: each step writes another slot of one
            # container, which then holds every step's value (a tensor links their graphs)
            return Accumulation(site, target.value, statement.value)
    return None


def find_recurrences(facts: FileFacts) -> list[Recurrence]:
    shapes = _Shapes(facts)
    return [r for r in map(shapes.statement_recurrence, facts.sites) if r is not None]
