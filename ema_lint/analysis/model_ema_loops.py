"""Is this loop an EMA of a model? Per-tensor model-average updates, in every spelling.

A model EMA (teacher, momentum encoder, Polyak/SWA average) walks two models' tensors in
step and moves each target tensor toward its source by a weight. Real code spells the walk
and the step many ways: `zip(ema.parameters(), model.parameters())`, lists stored on
`self`, plain function arguments (`update_ema(target_params, source_params, rate)`),
`for k in msd: esd[k]...`, `for name, p in model_params.items(): ema_params[name]...`;
`mul_().add_()`, `lerp_`, `copy_(p.lerp(p_ema, beta))`, `sub_(w * (s - p))`,
`v *= d; v += w * msd[k]`, `.data = d * old + (1 - d) * new`, or a helper per tensor
(`self.inplace_lerp(t, s, w)`, `self.avg_func(p_avg.data, src.data, steps)`).

So the question asked is structural, not a list of spellings: inside a `for` loop, a
statement writes a tensor that changes with the iteration (the target), from another tensor
that changes with the iteration (the source), with a weight that is neither (a decay, a
rate, `1 - m`). That excludes what only looks alike: a hard copy (`t.copy_(s)`: no weight),
BatchNorm-style statistics (the source is a batch statistic, not a per-iteration tensor),
recurrences over time (`range` loops) and optimizers (they read `.grad`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m

from ema_lint.analysis.torch_names import (
    ARITHMETIC_CALLS,
    AVERAGE_WORDS,
    EMA_HELPER_WORDS,
    GRAD_MODE_NAMES,
    GRADIENT_NAMES,
    IN_PLACE_METHODS,
    TRANSFER_METHODS,
)
from ema_lint.analysis.expressions import (
    attribute_name,
    collection_kind,
    names_and_attributes,
    names_in,
    strip_parens,
    whole_tensor,
)
from ema_lint.analysis.function_facts import Site
from ema_lint.analysis.value_flow import FileFacts


@dataclass(frozen=True, eq=False)
class ModelEmaLoop:
    """A loop that updates a model EMA one tensor at a time."""

    loop: cst.For
    site: Site
    target: cst.BaseExpression
    # the target is written through `.data` (autograd's version checks bypassed as well)
    through_data: bool


def model_ema_loops(facts: FileFacts) -> list[ModelEmaLoop]:
    """Every loop of the file that updates a model EMA per tensor, first site per loop."""
    found: dict[int, ModelEmaLoop] = {}
    for site in facts.sites:
        loops = [loop.node for loop in site.loops if isinstance(loop.node, cst.For)]
        if not loops:
            continue
        update = _Iteration(facts, site, loops).ema_update()
        if update is None:
            continue
        loop, target, data = update
        if id(loop) not in found:
            found[id(loop)] = ModelEmaLoop(loop, site, target, data)
    return list(found.values())


class _Iteration:
    """One statement seen from the loops around it."""

    def __init__(self, facts: FileFacts, site: Site, loops: list[cst.For]) -> None:
        self.facts = facts
        self.site = site
        self.loops = loops
        self.loop_names = {name: loop for loop in loops for name in names_in(loop.target)}

    def ema_update(self) -> tuple[cst.For, cst.BaseExpression, bool] | None:
        written = self._written()
        if written is None:
            return None
        target, parts, data = written
        target_key = self._per_iteration(target)
        if target_key is None:
            return None
        if self._in_optimizer():
            return None
        parts = [inlined for part in parts for inlined in self._inlined(part)]
        sources, weights = [], []
        for part in parts:
            if isinstance(part, _Scale):
                weights.append(part.value)
            else:
                self._split(part, target_key, sources, weights)
        # a helper per tensor takes the weight inside (`ema_updater.update_average(old, new)`)
        parts = [part.value if isinstance(part, _Scale) else part for part in parts]
        weighted = (
            weights or any(_is_helper_call(_bare(part)[0]) for part in parts) or self._helper_over_module_tensors(target)
        )
        if not weighted or not any(self._in_step(target, source) for source in sources):
            return None
        if not (self._moves_toward(written, target_key) or self._loaded_after(target)):
            return None
        loop = self._loop_of(target)
        if loop is None or any(_mentions_gradient(node) for node in (*parts, target, loop.iter, loop.body)):
            return None
        return loop, target, data

    def _is_a_key(self, node: cst.BaseExpression) -> bool:
        """`name` of `for name, p in model.named_parameters()`, which the collector binds to a
        string: the key, not a tensor."""
        node = strip_parens(node)
        bindings = self.site.function.bindings.get(node.value, ()) if isinstance(node, cst.Name) else ()
        return bool(bindings) and all(isinstance(b.value, cst.SimpleString) for b in bindings)

    def _helper_over_module_tensors(self, target: cst.BaseExpression) -> bool:
        """`for name, p in model.named_parameters(): ema.update(name, p.data)`: an EMA-named
        helper fed each tensor of a module keeps its weight inside (a metrics meter fed
        `metrics.items()` walks no module)."""
        statement = self.site.statement
        if not (isinstance(statement, cst.Expr) and _is_helper_call(statement.value)):
            return False
        # the average must be named: `ema.update(...)`, `swa.update_parameters(...)`; a bare
        # `stats.update(name, p)` or `pruner.update_mask(name, p)` is something else
        called = set(re.split(r"[._]", self.facts.code(statement.value.func).lower()))
        if called.isdisjoint(AVERAGE_WORDS):
            return False
        loop = self._loop_of(target)
        if loop is None:
            return False
        iterable = strip_parens(loop.iter)
        if m.matches(iterable, m.Call(func=m.Name("zip") | m.Name("enumerate"))):
            return any(collection_kind(a.value) is not None for a in iterable.args)
        return collection_kind(iterable) is not None

    def _moves_toward(self, written, target_key: str) -> bool:
        """An average keeps part of the old value: the write scales the target in place
        (`mul_`, `*=`, `lerp_`, `+=`, a helper given it), or its new value reads it
        (`e.copy_(d * e + (1 - d) * p)`); `p.copy_(sd[k] * scale)` only overwrites."""
        statement = self.site.statement
        if isinstance(statement, cst.AugAssign):
            return True
        if isinstance(statement, cst.Expr):
            call = statement.value
            if isinstance(call.func, cst.Attribute) and call.func.attr.value == "copy_" and call.args:
                return self._reads(call.args[0].value, target_key)
            inputs = [a.value for a in call.args if a.keyword is None or a.keyword.value != "out"]
            if len(inputs) < len(call.args):
                # `torch.add(t, s, alpha=w, out=t)` reads `t`; `torch.mul(s, 2, out=t)` only writes it
                return any(self._reads(value, target_key) for value in inputs)
            return True
        return self._reads(statement.value, target_key)

    def _loaded_after(self, target: cst.BaseExpression) -> bool:
        """`new[k] = a * ema_sd[k] + (1 - a) * sd[k]` into a dict the function then loads into
        a model (`ema_model.load_state_dict(new)`): the average is written through a copy."""
        target = strip_parens(target)
        function = self.site.function.node
        if not isinstance(target, cst.Subscript) or function is None:
            return False
        written = self.facts.code(strip_parens(target.value))
        loads = m.findall(function, m.Call(func=m.Attribute(attr=m.Name("load_state_dict")), args=[m.Arg(), m.ZeroOrMore()]))
        return any(self.facts.code(strip_parens(call.args[0].value)) == written for call in loads)

    def _reads(self, value: cst.BaseExpression, target_key: str) -> bool:
        """`value` reads the target, directly or through a temporary of the loop
        (`new = update_average(ma, cur); ma.copy_(new)`)."""
        operands = _operands(value)
        for operand in list(operands):
            inlined = self._temporary(operand)
            if inlined is not None:
                operands += _operands(inlined)
        return any(self._per_iteration(n) == target_key for n in operands)

    def _inlined(self, part: cst.BaseExpression) -> list[cst.BaseExpression]:
        """A temporary's value and the in-place scalings applied to it in the loop, for
        `diff = e - p; diff.mul_(1 - d); e.sub_(diff)`; any other part as it is."""
        if isinstance(part, _Scale):
            return [part]
        value = self._temporary(part)
        if value is None:
            return [part]
        name = strip_parens(part).value
        scalings = []
        body = self.loops[-1].body
        for statement in m.findall(body, m.AugAssign(target=m.Name(name), operator=m.MultiplyAssign() | m.DivideAssign())):
            scalings.append(_Scale(statement.value))
        scaling_call = m.Call(func=m.Attribute(value=m.Name(name), attr=m.Name("mul_") | m.Name("div_")), args=[m.Arg()])
        for statement in m.findall(body, m.Expr(value=scaling_call)):
            scalings.append(_Scale(statement.value.args[0].value))
        return [value, *scalings]

    def _temporary(self, node: cst.BaseExpression) -> cst.BaseExpression | None:
        """The value of a local bound once inside the loop to a computed expression (not
        itself a per-iteration tensor, which is judged as one)."""
        node = strip_parens(node)
        if not isinstance(node, cst.Name) or node.value in self.loop_names:
            return None
        bindings = [
            b
            for b in self.site.function.bindings.get(node.value, ())
            # an in-place scaling (`diff *= w`) keeps the value and is read by `_inlined`
            if not b.element_of and not b.augmented and any(loop.node in self.loops for loop in b.loops)
        ]
        if len(bindings) != 1 or self._per_iteration(bindings[0].value) is not None:
            return None
        value = strip_parens(bindings[0].value)
        return value if isinstance(value, (cst.BinaryOperation, cst.Call)) else None

    def _written(self) -> tuple[cst.BaseExpression, list[cst.BaseExpression], bool] | None:
        """(target, the expressions its new value is made of, written through `.data`)."""
        statement = self.site.statement
        if isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call):
            call = statement.value
            parts: list[cst.BaseExpression] = []
            node: cst.BaseExpression = call
            if _discarded_tail(call):
                # `e.data.mul_(d).add(p.data, alpha=1 - d)`: the tail's result is thrown away (a
                # bug that leaves only the decay), but the loop is still an EMA walked per tensor
                parts.extend(_Scale(a.value) if _scales(call, a) else a.value for a in call.args)
                node = strip_parens(call.func.value)
            while isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value in IN_PLACE_METHODS:
                parts.extend(_Scale(a.value) if _scales(node, a) else a.value for a in node.args)
                node = strip_parens(node.func.value)
            if node is not call:
                target, data = _bare(node)
                return target, parts, data
            keywords = {a.keyword.value: a for a in call.args if a.keyword is not None}
            if "out" in keywords and attribute_name(call.func) in ARITHMETIC_CALLS:
                # `torch.add(t, s, alpha=w, out=t)`: an in-place step spelt as a function
                target, data = _bare(keywords["out"].value)
                others = [a for a in call.args if a is not keywords["out"]]
                return target, [_Scale(a.value) if _scales(call, a) else a.value for a in others], data
            if _is_helper_call(call):
                arguments = [a.value for a in call.args]
                for index, argument in enumerate(arguments):
                    if self._per_iteration(argument) is not None and not self._is_a_key(argument):
                        target, data = _bare(argument)
                        return target, arguments[:index] + arguments[index + 1 :], data
            return None
        if isinstance(statement, cst.Assign) and len(statement.targets) == 1:
            target = strip_parens(statement.targets[0].target)
            whole = isinstance(target, cst.Subscript) and whole_tensor(target)
            if whole:
                target = strip_parens(target.value)
            if isinstance(target, cst.Attribute) and target.attr.value == "data":
                return strip_parens(target.value), [statement.value], True
            if whole or isinstance(target, cst.Subscript):
                return target, [statement.value], False
            return None
        if isinstance(statement, cst.AugAssign) and isinstance(
            statement.operator, (cst.AddAssign, cst.SubtractAssign, cst.MultiplyAssign)
        ):
            target, data = _bare(statement.target)
            return target, [statement.value], data
        return None

    def _per_iteration(self, node: cst.BaseExpression, depth: int = 0) -> str | None:
        """A key naming the tensor `node` is when it changes with the loop's iteration
        (a loop variable, a lookup by one, or a name bound to either inside the loop)."""
        node, _ = _bare(node)
        if isinstance(node, cst.Name):
            if node.value in self.loop_names:
                return self._value_of_items(node.value) or node.value
            if depth < 3:
                for binding in self.site.function.bindings.get(node.value, ()):
                    if binding.element_of or not binding.loops:
                        continue
                    if any(loop.node in self.loops for loop in binding.loops):
                        key = self._per_iteration(binding.value, depth + 1)
                        if key is not None:
                            return key
            return None
        if isinstance(node, cst.Subscript):
            if whole_tensor(node):
                # `ema_param.data[:] = ...` writes the whole tensor
                return self._per_iteration(node.value, depth)
            # `d[k]` with `k` a loop variable over names (or a key made from one), not a
            # position or an arbitrary expression
            if self._key(node) is not None:
                return self.facts.code(node.value) + "[]"
            return None
        if isinstance(node, cst.Attribute):
            inner = self._per_iteration(node.value, depth)
            return None if inner is None else f"{inner}.{node.attr.value}"
        return None

    def _value_of_items(self, name: str) -> str | None:
        """`d[]` for `v` of `for k, v in d.items()`: the value and `d[k]` are one tensor
        (`for k, v in cur.items(): cur[k].copy_(a * v + (1 - a) * last[k])`)."""
        loop = self.loop_names[name]
        iterable, target = strip_parens(loop.iter), loop.target
        if not (
            m.matches(iterable, m.Call(func=m.Attribute(attr=m.Name("items")), args=[]))
            and isinstance(target, cst.Tuple)
            and len(target.elements) == 2
            and m.matches(target.elements[1].value, m.Name(name))
        ):
            return None
        return self.facts.code(iterable.func.value) + "[]"

    def _in_optimizer(self) -> bool:
        """An optimizer's loop: in a class named or derived like one, in a function taking
        gradients, or a loop body that binds a gradient."""
        function = self.site.function
        bases = self.facts.class_bases.get(function.class_name or "", ())
        if any("optim" in name.lower() for name in (function.class_name or "", *bases)):
            return True
        if GRADIENT_NAMES & set(function.params):
            return True
        return any(
            binding.loops and any(loop.node in self.loops for loop in binding.loops)
            for name in GRADIENT_NAMES & set(function.bindings)
            for binding in function.bindings[name]
        )

    def _in_step(self, target: cst.BaseExpression, source: cst.BaseExpression) -> bool:
        """Two tensors of one model walk, matched entry for entry: bound by the same loop
        (`for e, p in zip(...)`, `for name, p in ...: ema[name]`), and when both are lookups,
        by the same key (`esd[k]`, `msd[k]`; not `targets[i]`, `encoded[j]`)."""
        first, second = self._anchor(target), self._anchor(source)
        if first is None or second is None:
            return False
        (first_name, first_lookup), (second_name, second_lookup) = first, second
        if first_lookup and second_lookup:
            return first_name == second_name
        if not first_lookup and not second_lookup and first_name == second_name:
            return False  # two tensors of one module (`layer.weight += layer.lora_B @ ...`)
        return self.loop_names[first_name] is self.loop_names[second_name]

    def _anchor(self, node: cst.BaseExpression, depth: int = 0) -> tuple[str, bool] | None:
        """The loop variable a per-iteration tensor follows, and whether it is a lookup key."""
        node, _ = _bare(node)
        while isinstance(node, cst.Attribute):
            node, _ = _bare(node.value)
        if isinstance(node, cst.Subscript):
            if whole_tensor(node):
                return self._anchor(node.value, depth)
            key = self._key(node)
            return None if key is None else (key, True)
        if not isinstance(node, cst.Name):
            return None
        if node.value in self.loop_names:
            return node.value, False
        if depth < 3:
            for binding in self.site.function.bindings.get(node.value, ()):
                if not binding.element_of and binding.loops and any(loop.node in self.loops for loop in binding.loops):
                    if self._per_iteration(binding.value) is not None:
                        return self._anchor(binding.value, depth + 1)
        return None

    def _key(self, lookup: cst.Subscript) -> str | None:
        """The loop variable a lookup `d[k]` follows: `k` itself, or the variable a key
        bound in the loop is made from (`j = "module." + k`, `s = self.names[k]`)."""
        if len(lookup.slice) != 1 or not isinstance(lookup.slice[0].slice, cst.Index):
            return None
        index = strip_parens(lookup.slice[0].slice.value)
        if not isinstance(index, cst.Name):
            return None
        if index.value in self.loop_names:
            return None if self._counts(self.loop_names[index.value]) else index.value
        for binding in self.site.function.bindings.get(index.value, ()):
            if binding.element_of or not any(loop.node in self.loops for loop in binding.loops):
                continue
            made_from = [name for name in names_in(binding.value) if name in self.loop_names]
            if len(made_from) == 1 and not self._counts(self.loop_names[made_from[0]]):
                return made_from[0]
        return None

    def _counts(self, loop: cst.For) -> bool:
        """A loop over `range(...)` / `enumerate(range(...))`: its variable is a position."""
        iterable = strip_parens(loop.iter)
        while isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name):
            if iterable.func.value == "range":
                return True
            if iterable.func.value != "enumerate" or not iterable.args:
                return False
            iterable = strip_parens(iterable.args[0].value)
        return False

    def _split(
        self, node: cst.BaseExpression, target_key: str, sources: list, weights: list, inlined_names: frozenset = frozenset()
    ) -> None:
        """Sort the leaves of `node` into other per-iteration tensors and weights.
        `inlined_names`: temporaries already replaced by their value on the way here (`x = x * d`
        in a loop refers to itself)."""
        node = strip_parens(node)
        key = self._per_iteration(node)
        if key is not None:
            if key != target_key:
                sources.append(node)
            return
        inlined = self._temporary(node) if not (isinstance(node, cst.Name) and node.value in inlined_names) else None
        if inlined is not None:
            # `new = (1 - d) * p + d * shadow[name]; shadow[name] = new.clone()`
            self._split(inlined, target_key, sources, weights, inlined_names | {node.value})
            return
        if isinstance(node, (cst.Name, cst.Attribute, cst.Integer, cst.Float)):
            weights.append(node)
            return
        if isinstance(node, cst.BinaryOperation):
            self._split(node.left, target_key, sources, weights, inlined_names)
            self._split(node.right, target_key, sources, weights, inlined_names)
        elif isinstance(node, cst.UnaryOperation):
            self._split(node.expression, target_key, sources, weights, inlined_names)
        elif isinstance(node, cst.Call):
            # only arithmetic is looked into: any other call (`resize(sd[k])`, `load(w[key])`)
            # makes something new, which is not an average of the two tensors
            method = attribute_name(node.func) or ""
            if isinstance(node.func, cst.Attribute) and method in TRANSFER_METHODS:
                self._split(node.func.value, target_key, sources, weights, inlined_names)
            elif method in ARITHMETIC_CALLS or _is_helper_call(node):
                if isinstance(node.func, cst.Attribute):
                    # `p.lerp(p_ema, beta)`: the receiver may be the source; `torch.lerp`'s is no weight
                    self._split(node.func.value, target_key, sources, [], inlined_names)
                for argument in node.args:
                    self._split(argument.value, target_key, sources, weights, inlined_names)

    def _loop_of(self, target: cst.BaseExpression) -> cst.For | None:
        """The innermost loop whose variable the target changes with."""
        names = names_in(target)
        for binding_name in list(names):
            for binding in self.site.function.bindings.get(binding_name, ()):
                if not binding.element_of and binding.loops:
                    names |= names_in(binding.value)
        for loop in reversed(self.loops):
            if names & names_in(loop.target):
                return loop
        return None


def _operands(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    """Every sub-expression of `node` that can name a tensor."""
    found = []

    class Operands(cst.CSTVisitor):
        def on_visit(self, sub: cst.CSTNode) -> bool:
            if isinstance(sub, (cst.Name, cst.Attribute, cst.Subscript)):
                found.append(sub)
            return True

    node.visit(Operands())
    return found


@dataclass(frozen=True)
class _Scale:
    """An argument that only scales the target (`mul_(d)`, `alpha=w`): a weight, never a source."""

    value: cst.BaseExpression


def _scales(call: cst.Call, argument: cst.Arg) -> bool:
    method = attribute_name(call.func)
    positional = [a for a in call.args if a.keyword is None]
    if argument.keyword is not None:
        return argument.keyword.value in ("alpha", "value", "weight")
    if method in ("mul_", "div_"):
        return True
    # the deprecated `add_(w, t)` and `lerp_(end, w)`: the weight is not the tensor
    if method in ("add_", "sub_") and len(positional) == 2:
        return argument is positional[0]
    return method == "lerp_" and len(positional) == 2 and argument is positional[1]


def _discarded_tail(call: cst.Call) -> bool:
    """An out-of-place step chained onto an in-place one, as a statement: `e.mul_(d).add(p)`."""
    if not (isinstance(call.func, cst.Attribute) and call.func.attr.value in ARITHMETIC_CALLS - IN_PLACE_METHODS):
        return False
    receiver = strip_parens(call.func.value)
    return (
        isinstance(receiver, cst.Call)
        and isinstance(receiver.func, cst.Attribute)
        and receiver.func.attr.value in IN_PLACE_METHODS
    )


def _is_helper_call(node: cst.BaseExpression) -> bool:
    node = strip_parens(node)
    if not isinstance(node, cst.Call):
        return False
    name = (attribute_name(node.func) or "").lower()
    return any(word in name for word in EMA_HELPER_WORDS)


def _mentions_gradient(node: cst.CSTNode) -> bool:
    for name in names_and_attributes(node):
        word = (name.value if isinstance(name, cst.Name) else name.attr.value).lower()
        if word in GRAD_MODE_NAMES:
            continue  # `if p.requires_grad:`, `torch.no_grad()`: no gradient is read
        if word in GRADIENT_NAMES or word.endswith("_grad") or word.startswith("grad_"):
            return True
    return False


def _bare(node: cst.BaseExpression) -> tuple[cst.BaseExpression, bool]:
    """`p` for `p.data`, `p.detach()`, `p.data.float()`, and whether `.data` was stripped."""
    node = strip_parens(node)
    data = False
    while True:
        if isinstance(node, cst.Attribute) and node.attr.value == "data":
            node, data = strip_parens(node.value), True
        elif (
            isinstance(node, cst.Call)
            and isinstance(node.func, cst.Attribute)
            and node.func.attr.value in TRANSFER_METHODS
        ):
            node = strip_parens(node.func.value)
        else:
            return node, data
