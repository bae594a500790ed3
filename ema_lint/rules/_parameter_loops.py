"""EMA updates written as Python loops over a model's tensors, and their `torch._foreach_*` rewrite.

Shared by EMA301 (the loop) and EMA203 (the same loop written through `.data`). The rewrite
mirrors the loop body's arithmetic op for op (`a * d + b * w` becomes `_foreach_mul_` then
`_foreach_add_` of `_foreach_mul`), so every element goes through the same roundings as in
the loop. tests/test_autograd_rules.py checks this on real tensors, and found one exception
(torch 2.13, CPU): an in-place `_foreach_mul_(tensors, python_float)` rounds the scalar to
a bfloat16/float16 tensor's dtype before multiplying, where `t.mul_(python_float)` keeps it
in float32, so the rewrites that start with `_foreach_mul_` are bit-exact only for float32
and float64 tensors. `_foreach_lerp_` matches `lerp_` in every dtype tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m

from ema_lint.diagnostics import Applicability, Fix, RequiredImport

from ema_lint.analysis.expressions import collection_kind, names_in, root_name, strip_parens
from ema_lint.analysis.recurrences import Recurrence
from ema_lint.analysis.torch_names import PARAMETER_SOURCES
from ema_lint.analysis.value_flow import FileFacts


@dataclass(eq=False)
class ParameterLoop:
    """A `for` loop whose variable `state_name` walks a module's tensors and is EMA-updated."""

    node: cst.For
    recurrence: Recurrence
    kind: str
    state_name: str


def _loop_names(target: cst.BaseExpression) -> set[str]:
    return names_in(target)


def _iterable_for(loop: cst.For, name: str) -> cst.BaseExpression:
    """The iterable that binds `name`: the matching `zip` argument, else the whole iterable."""
    target, iterable = strip_parens(loop.target), strip_parens(loop.iter)
    if isinstance(target, cst.Tuple) and m.matches(iterable, m.Call(func=m.Name("zip"))):
        positional = [a.value for a in iterable.args if a.keyword is None]
        if len(positional) == len(target.elements):
            for element, argument in zip(target.elements, positional):
                if name in _loop_names(element.value):
                    return argument
    return iterable


def _kind(facts: FileFacts, recurrence: Recurrence, iterable: cst.BaseExpression) -> str | None:
    """The kind of module tensors `iterable` yields: directly, through the one kind of value
    a local name is bound to, or through what the class's methods assign to a `self.`
    attribute (`self.target_params = list(target_net.state_dict().values())`)."""
    iterable = strip_parens(iterable)
    kind = collection_kind(iterable)
    if kind is not None:
        return kind
    function = recurrence.site.function
    if isinstance(iterable, cst.Name):
        kinds = {collection_kind(b.value) for b in function.bindings.get(iterable.value, ()) if not b.element_of}
    elif m.matches(iterable, m.Attribute(value=m.Name("self"))) and function.class_name is not None:
        code = facts.code(iterable)
        kinds = {
            _kept_copies_of(site.statement.value)
            for site in facts.sites
            if site.function.class_name == function.class_name
            and isinstance(site.statement, cst.Assign)
            and any(facts.code(strip_parens(t.target)) == code for t in site.statement.targets)
        }
    else:
        return None
    return kinds.pop() if len(kinds) == 1 else None


def _kept_copies_of(value: cst.BaseExpression) -> str | None:
    """`collection_kind`, also through a list comprehension over module tensors
    (`self.shadow = [p.detach().clone() for p in model.parameters()]`): copies the class keeps
    from call to call, as a model EMA's are."""
    value = strip_parens(value)
    if isinstance(value, cst.ListComp) and value.for_in.inner_for_in is None:
        return collection_kind(value.for_in.iter)
    return collection_kind(value)


def parameter_loop(facts: FileFacts, recurrence: Recurrence) -> ParameterLoop | None:
    """The innermost enclosing loop over module tensors that binds the updated state, if any."""
    name = root_name(recurrence.state)
    if name is None:
        return None
    for loop in reversed(recurrence.site.loops):
        node = loop.node
        if isinstance(node, cst.For) and name in _loop_names(node.target):
            kind = _kind(facts, recurrence, _iterable_for(node, name))
            return ParameterLoop(node, recurrence, kind, name) if kind else None
    return None


def _bare(node: cst.BaseExpression) -> cst.BaseExpression:
    """`p` for `p.data`, `p.detach()`, `p.detach().data`."""
    node = strip_parens(node)
    while True:
        if isinstance(node, cst.Attribute) and node.attr.value == "data":
            node = strip_parens(node.value)
        elif m.matches(node, m.Call(func=m.Attribute(attr=m.Name("detach")), args=[])):
            node = strip_parens(node.func.value)
        else:
            return node


def _as_list(facts: FileFacts, iterable: cst.BaseExpression, loop: ParameterLoop) -> str | None:
    iterable = strip_parens(iterable)
    if m.matches(iterable, m.Call(func=m.Name("list"))):
        return facts.module.code_for_node(iterable)
    if isinstance(iterable, cst.Call):
        return f"list({facts.module.code_for_node(iterable)})"
    if isinstance(iterable, cst.Name):
        bindings = loop.recurrence.site.function.bindings.get(iterable.value, ())
        if bindings and all(m.matches(b.value, m.Call(func=m.Name("list")) | m.ListComp()) for b in bindings):
            return iterable.value
    return None


@dataclass(frozen=True)
class Rewrite:
    lines: list[str]
    # bit-identical to the loop in every floating dtype, not only float32/float64
    exact_in_every_dtype: bool


def foreach_rewrite(facts: FileFacts, loop: ParameterLoop) -> Rewrite | None:
    """The statements that replace the loop, or None when the body is not one exact EMA step.

    Only loops over `.parameters()` are rewritten: `state_dict()` and `buffers()` hold integer
    tensors (`num_batches_tracked`) that a float `_foreach_mul_` cannot update in place.
    """
    node, recurrence = loop.node, loop.recurrence
    if loop.kind not in PARAMETER_SOURCES or node.orelse is not None or node.asynchronous:
        return None
    body = node.body
    if not (isinstance(body, cst.IndentedBlock) and len(body.body) == 1):
        return None
    if recurrence.site.only_statement_of is not body.body[0]:
        return None
    target, iterable = strip_parens(node.target), strip_parens(node.iter)
    if not (
        isinstance(target, cst.Tuple)
        and len(target.elements) == 2
        and all(isinstance(e.value, cst.Name) for e in target.elements)
        and m.matches(iterable, m.Call(func=m.Name("zip"), args=[m.Arg(keyword=None), m.Arg(keyword=None)]))
    ):
        return None
    names = [e.value.value for e in target.elements]
    if loop.state_name not in names:
        return None
    sample_name = names[1 - names.index(loop.state_name)]
    state, sample = _bare(recurrence.state), _bare(recurrence.sample)
    if not (m.matches(state, m.Name(loop.state_name)) and m.matches(sample, m.Name(sample_name))):
        return None
    coefficients = [c for c in (recurrence.decay, recurrence.weight) if c is not None]
    if any(names_in(c) & set(names) for c in coefficients):
        return None
    lists = {
        name: _as_list(facts, argument.value, loop) for name, argument in zip(names, iterable.args)
    }
    ema, source = lists[loop.state_name], lists[sample_name]
    if ema is None or source is None:
        return None
    def code(node: cst.CSTNode) -> str:
        return facts.module.code_for_node(strip_parens(node))

    decay = code(recurrence.decay) if recurrence.decay is not None else None
    weight = code(recurrence.weight) if recurrence.weight is not None else None
    form = recurrence.form
    if form == "mul_add" and recurrence.alpha is not None:
        return Rewrite(
            [f"torch._foreach_mul_({ema}, {decay})", f"torch._foreach_add_({ema}, {source}, alpha={weight})"],
            False,
        )
    if form in ("mul_add", "affine", "copy_affine") and decay is not None:
        if weight is None:
            return Rewrite([f"torch._foreach_mul_({ema}, {decay})", f"torch._foreach_add_({ema}, {source})"], False)
        return Rewrite(
            [
                f"torch._foreach_mul_({ema}, {decay})",
                f"torch._foreach_add_({ema}, torch._foreach_mul({source}, {weight}))",
            ],
            False,
        )
    if form == "lerp_" and weight is not None:
        return Rewrite([f"torch._foreach_lerp_({ema}, {source}, {weight})"], True)
    return None


def replacement_text(lines: list[str], column: int, indent: str, wrap_no_grad: bool) -> str:
    """Source for `lines` placed where a statement at 0-based `column` stood."""
    if wrap_no_grad:
        lines = ["with torch.no_grad():", *(indent + line for line in lines)]
    padding = " " * column
    return lines[0] + "".join(f"\n{padding}{line}" for line in lines[1:])


def foreach_fix(rule, facts: FileFacts, loop: ParameterLoop, *, safe_when_wrapped: bool):
    """The `Fix` replacing `loop` by its `torch._foreach_*` form, or None when there is none.

    Outside a grad-off context the replacement goes under `with torch.no_grad():`, which a
    `_foreach_*_` on parameters needs; that is safe only when the loop recorded no graph
    (`safe_when_wrapped`, true for `.data` writes). A rewrite that is exact only in float32
    and float64 is unsafe, since the tensors' dtype is not known statically.
    """
    rewrite = foreach_rewrite(facts, loop)
    if rewrite is None:
        return None
    site = loop.recurrence.site
    wrap = not (site.grad_off or site.function.grad_free)
    column = rule.range_of(loop.node).start.column
    text = replacement_text(rewrite.lines, column, facts.module.default_indent, wrap)
    safe = rewrite.exact_in_every_dtype and (not wrap or safe_when_wrapped)
    return Fix(
        "Replace the loop with `torch._foreach_*` calls" + (" under `torch.no_grad()`" if wrap else ""),
        Applicability.SAFE if safe else Applicability.UNSAFE,
        (rule.edit_replacing(loop.node, text),),
        (RequiredImport("torch"),),
    )
