"""Per-function facts of one file, from one libcst walk: bindings, loops, backward calls,
the statements the autograd and EMA analyses judge (`Site`) and the calls between functions
of the file. Nothing is imported or executed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import libcst as cst
import libcst.matchers as m

from ema_lint.analysis.expressions import (
    attribute_name,
    backward_runner,
    collection_kind,
    creates_graph,
    freezes,
    is_false_arg,
    is_grad_off_context,
    is_grad_off_decorator,
    is_scalar_type,
    names_in,
    optimizer_like,
    root_name,
    strip_parens,
    toggled_modules,
)
from ema_lint.analysis.names import dotted_text
from ema_lint.analysis.torch_names import (
    FORWARD_METHODS,
    MODULE_ONLY_METHODS,
    NAMED_ITEMS,
    NUMERIC_LIBRARIES,
    NUMPY_CONVERTING,
    PARAMETER_SOURCES,
    TARGET_NAME,
)


@dataclass(eq=False)
class Loop:
    node: cst.For | cst.While
    runs_backward: bool = False
    # steps an optimizer in its body (directly or through functions of this file): one
    # iteration is at least one training step
    steps_optimizer: bool = False


@dataclass(eq=False)
class Binding:
    """One way a local name gets a value: `name = value`, or the element of a loop's iterable."""

    value: cst.BaseExpression
    loops: tuple[Loop, ...]
    order: int
    element_of: bool = False
    # the statement when the binding is a plain `name = value` at a loop body's top level
    statement: cst.CSTNode | None = None
    # `a, b = f(...)`: the position of this name in the unpacked result of the call `value`
    element_index: int | None = None
    # ids of the enclosing indented blocks, as `Site.blocks`
    blocks: tuple[int, ...] = ()
    # `name += value`: the name keeps its old value too
    augmented: bool = False
    # bound under a grad-off context (or in a function that runs with gradients off)
    grad_off: bool = False


@dataclass(eq=False)
class Function:
    node: cst.FunctionDef | None
    class_name: str | None
    params: tuple[str, ...] = ()
    grad_off_decorated: bool = False
    bindings: dict[str, list[Binding]] = field(default_factory=dict)
    backward_names: set[str] = field(default_factory=set)
    # the text of every name and attribute chain a backpropagated value is computed from,
    # through the function's bindings (`buf` for `torch.stack(buf).mean().backward()`)
    feeds_backward: set[str] = field(default_factory=set)
    # the expressions handed to `backward`
    backpropagated: list[cst.BaseExpression] = field(default_factory=list)
    # where `backward` is called: (order, the loops around the call)
    backward_calls: list[tuple[int, tuple["Loop", ...]]] = field(default_factory=list)
    # parameters that receive values carrying autograd history
    graph_params: set[str] = field(default_factory=set)
    returned_names: set[str] = field(default_factory=set)
    # the values of its `return` statements
    returns: list[cst.BaseExpression] = field(default_factory=list)
    grad_free: bool = False
    # steps an optimizer (directly or through functions of this file)
    steps_optimizer: bool = False
    # parameters annotated as plain numbers or strings (`real_acc: float`): not assumed to carry
    # a graph just because the function is a `forward` (a caller passing a tensor still counts)
    scalar_params: frozenset[str] = frozenset()
    # the function this one is defined in (a closure's), None at module or class level
    enclosing: "Function | None" = None
    # local names it calls or uses as a module (`model(x)`, `model.train()`): objects with a
    # forward, never tensors that carry history
    objects: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.node.name.value if self.node is not None else ""

    def scope_of(self, name: str) -> "Function":
        """The function whose local `name` is: this one, or for a closure's free variable the
        nearest enclosing function that binds it."""
        scope: Function | None = self
        while scope is not None:
            if name in scope.bindings or name in scope.params:
                return scope
            scope = scope.enclosing
        return self


@dataclass(eq=False)
class Site:
    """A small statement with the context the rules judge it in."""

    statement: cst.BaseSmallStatement
    function: Function
    loops: tuple[Loop, ...]
    grad_off: bool
    order: int
    # the statement line when it is the whole body of the enclosing block
    only_statement_of: cst.CSTNode | None = None
    # ids of the enclosing indented blocks, outermost first: two statements run in the same
    # call in source order when one's blocks are a prefix of the other's
    blocks: tuple[int, ...] = ()
    # the small statement just before this one in the same block, if any
    follows: "Site | None" = None
    # the tests of the `if` statements whose body holds this one, outermost first
    guards: tuple[cst.BaseExpression, ...] = ()

    def same_path(self, other: "Site") -> bool:
        shorter = min(len(self.blocks), len(other.blocks))
        return self.function is other.function and self.blocks[:shorter] == other.blocks[:shorter]


@dataclass(eq=False)
class Call:
    """`self.method(...)` or `function(...)` inside the same file, for interprocedural facts."""

    caller: Function
    callee: str
    class_name: str | None
    args: Sequence[cst.Arg]
    grad_off: bool
    loops: tuple["Loop", ...] = ()


class FunctionFactsCollector(cst.BatchableCSTVisitor):
    def __init__(self) -> None:
        self.functions: list[Function] = []
        self.sites: list[Site] = []
        self.calls: list[Call] = []
        self._functions: list[Function] = [Function(None, None)]
        self.functions.append(self._functions[0])
        self._scopes: list[str | Function] = []
        self._loops: list[list[Loop]] = [[]]
        self._grad_off: list[int] = [0]
        self._order = 0
        # modules whose parameters are set `requires_grad_(False)`
        self.frozen: list[cst.BaseExpression] = []
        # modules handed to a requires-grad helper (`toggle_grad(model, False)`), with whether
        # the call turns gradients off
        # `toggle_grad(modules, flag)` calls: the modules, whether they turn gradients off, the
        # function and statement order of the call
        self.toggled: list[tuple[list[cst.BaseExpression], bool, Function, int]] = []
        self._lambdas = 0
        self._single_body: list[cst.CSTNode | None] = [None]
        self._blocks: list[int] = []
        self._previous: dict[tuple, Site] = {}
        # class name -> its bases as written (`torch.optim.Optimizer`)
        self.class_bases: dict[str, tuple[str, ...]] = {}
        # local names bound to numeric libraries (`np`, `roc_auc_score`), and the top-level
        # packages the file imports
        self.numeric_names: set[str] = set()
        # the names among them whose functions turn a tensor into a NumPy array (not `math`,
        # whose `isnan` takes any number, a tensor with history included)
        self.array_names: set[str] = set()
        self.imported_roots: set[str] = set()
        self._suspended: list[Loop] = []
        self._guards: list[cst.BaseExpression] = []

    @property
    def function(self) -> Function:
        return self._functions[-1]

    def _next(self) -> int:
        self._order += 1
        return self._order

    def visit_Import(self, node: cst.Import) -> None:
        for alias in node.names:
            module = dotted_text(alias.name) or ""
            root = module.partition(".")[0]
            self.imported_roots.add(root)
            if root in NUMERIC_LIBRARIES:
                local = alias.asname.name.value if alias.asname else root
                self.numeric_names.add(local)
                if root in NUMPY_CONVERTING:
                    self.array_names.add(local)

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        if node.module is None or node.relative:
            return
        root = (dotted_text(node.module) or "").partition(".")[0]
        self.imported_roots.add(root)
        if root in NUMERIC_LIBRARIES and not isinstance(node.names, cst.ImportStar):
            for alias in node.names:
                self.numeric_names.add(alias.asname.name.value if alias.asname else dotted_text(alias.name) or "")
                if root in NUMPY_CONVERTING:
                    self.array_names.add(alias.asname.name.value if alias.asname else dotted_text(alias.name) or "")

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._scopes.append(node.name.value)
        self.class_bases[node.name.value] = tuple(dotted_text(base.value) or "" for base in node.bases)

    def leave_ClassDef(self, node: cst.ClassDef) -> None:
        self._scopes.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        params = node.params
        declared = (*params.posonly_params, *params.params, *params.kwonly_params)
        names = tuple(p.name.value for p in declared)
        # a method is a function whose innermost enclosing scope is a class body
        class_name = self._scopes[-1] if self._scopes and isinstance(self._scopes[-1], str) else None
        function = Function(
            node,
            class_name,
            names,
            any(is_grad_off_decorator(d) for d in node.decorators),
            scalar_params=frozenset(
                p.name.value for p in declared if p.annotation is not None and is_scalar_type(p.annotation.annotation)
            ),
            enclosing=self._scopes[-1] if self._scopes and isinstance(self._scopes[-1], Function) else None,
        )
        # a `forward`'s inputs carry a graph; a plain class's `__call__` (a reward filter, a
        # meter) is no module's forward
        may_be_module = class_name is None or any(
            base not in ("object", "") for base in self.class_bases.get(class_name, ())
        )
        if node.name.value in FORWARD_METHODS and may_be_module:
            # a loss module's `forward(input, target)`: the targets are data (a caller passing
            # a tensor with history still counts, through `_propagate_graph_params`)
            function.graph_params.update(
                n for n in names if n not in ("self", "cls", *function.scalar_params) and not TARGET_NAME.fullmatch(n)
            )
        self.functions.append(function)
        self._functions.append(function)
        self._scopes.append(function)
        self._loops.append([])
        self._grad_off.append(0)
        self._single_body.append(None)

    def leave_FunctionDef(self, node: cst.FunctionDef) -> None:
        self._functions.pop()
        self._scopes.pop()
        self._loops.pop()
        self._grad_off.pop()
        self._single_body.pop()

    # Calls inside a lambda run when the lambda is called, not where it is written.
    def visit_Lambda(self, node: cst.Lambda) -> None:
        self._lambdas += 1

    def leave_Lambda(self, node: cst.Lambda) -> None:
        self._lambdas -= 1

    def _compound(self) -> None:
        """A compound statement separates the small statements before and after it."""
        self._previous.pop(self._block_key(), None)

    def visit_If(self, node: cst.If) -> None:
        self._compound()

    def visit_If_body(self, node: cst.If) -> None:
        self._guards.append(node.test)

    def leave_If_body(self, node: cst.If) -> None:
        self._guards.pop()

    def visit_Try(self, node: cst.Try) -> None:
        self._compound()

    def visit_With(self, node: cst.With) -> None:
        self._compound()
        if any(is_grad_off_context(item.item) for item in node.items):
            self._grad_off[-1] += 1

    def leave_With(self, node: cst.With) -> None:
        if any(is_grad_off_context(item.item) for item in node.items):
            self._grad_off[-1] -= 1

    def _enter_loop(self, node: cst.For | cst.While) -> None:
        loop = Loop(node)
        self._loops[-1].append(loop)

    def visit_For(self, node: cst.For) -> None:
        self._compound()
        self._bind_target(node.target, node.iter, element_of=True)
        self._enter_loop(node)
        iterable = strip_parens(node.iter)
        if isinstance(iterable, cst.Call) and attribute_name(iterable.func) == "parameters":
            if isinstance(iterable.func, cst.Attribute) and isinstance(node.body, cst.IndentedBlock):
                for line in node.body.body:
                    if freezes(line):
                        self.frozen.append(iterable.func.value)

    def leave_For(self, node: cst.For) -> None:
        self._loops[-1].pop()

    # `for ... else:` runs once, after the loop
    def visit_For_orelse(self, node: cst.For) -> None:
        self._suspended.append(self._loops[-1].pop())

    def leave_For_orelse(self, node: cst.For) -> None:
        self._loops[-1].append(self._suspended.pop())

    def visit_While(self, node: cst.While) -> None:
        self._compound()
        self._enter_loop(node)

    def leave_While(self, node: cst.While) -> None:
        self._loops[-1].pop()

    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> None:
        single = node.body[0] if len(node.body) == 1 else None
        self._single_body.append(single)
        self._blocks.append(id(node))

    def leave_IndentedBlock(self, node: cst.IndentedBlock) -> None:
        self._single_body.pop()
        self._blocks.pop()

    def _bind_target(
        self,
        target: cst.BaseExpression,
        value: cst.BaseExpression,
        *,
        element_of: bool,
        statement: cst.CSTNode | None = None,
        element_index: int | None = None,
        augmented: bool = False,
    ) -> None:
        target = strip_parens(target)
        value = strip_parens(value)
        if isinstance(target, cst.Name):
            self.function.bindings.setdefault(target.value, []).append(
                Binding(
                    value,
                    tuple(self._loops[-1]),
                    self._next(),
                    element_of,
                    statement,
                    element_index,
                    tuple(self._blocks),
                    augmented,
                    self._grad_off[-1] > 0 or self.function.grad_off_decorated,
                )
            )
        elif isinstance(target, (cst.Tuple, cst.List)):
            elements = [e.value for e in target.elements]
            paired = None
            if element_of and len(elements) == 2 and m.matches(value, m.Call(func=m.Name("enumerate"))):
                positional = [a.value for a in value.args if a.keyword is None]
                if positional:
                    # `for i, x in enumerate(items)`: `i` is a count, `x` an element of `items`.
                    self._bind_target(elements[0], cst.Integer("0"), element_of=False)
                    self._bind_target(elements[1], positional[0], element_of=True)
                    return
            if element_of and len(elements) == 2 and isinstance(value, cst.Call) and attribute_name(value.func) in NAMED_ITEMS:
                # `for name, p in model.named_parameters()`: `name` is a string key
                self._bind_target(elements[0], cst.SimpleString('""'), element_of=False)
                self._bind_target(elements[1], value, element_of=True)
                return
            if element_of and m.matches(value, m.Call(func=m.Name("zip"))):
                positional = [a.value for a in value.args if a.keyword is None]
                if len(positional) == len(elements):
                    paired = positional
            elif isinstance(value, (cst.Tuple, cst.List)) and len(value.elements) == len(elements):
                paired = [e.value for e in value.elements]
                element_of = False
            unpacked_call = not element_of and paired is None and isinstance(value, cst.Call)
            for index, element in enumerate(elements):
                self._bind_target(
                    element,
                    paired[index] if paired else value,
                    element_of=element_of,
                    element_index=index if unpacked_call else None,
                )

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> None:
        single = self._single_body[-1] is node and len(node.body) == 1
        for statement in node.body:
            if isinstance(statement, cst.Assign):
                value = statement.value
                if m.matches(value, m.Call(func=m.Attribute(attr=m.Name("requires_grad_")))) and is_false_arg(
                    value.args
                ):
                    # `self.teacher = teacher.requires_grad_(False)` freezes both names
                    self.frozen.extend(t.target for t in statement.targets)
                for target in statement.targets:
                    top_level = statement if self._at_loop_top(node) else None
                    self._bind_target(target.target, statement.value, element_of=False, statement=top_level)
            elif isinstance(statement, cst.AnnAssign) and statement.value is not None:
                self._bind_target(statement.target, statement.value, element_of=False)
            elif isinstance(statement, cst.AugAssign):
                self._bind_target(statement.target, statement.value, element_of=False, augmented=True)
            elif m.matches(
                statement,
                m.Expr(m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("append") | m.Name("extend")), args=[m.Arg(keyword=None)])),
            ):
                # `losses.append(loss)`: the list now holds what `loss` holds, besides its old items
                call = statement.value
                self._bind_target(call.func.value, call.args[0].value, element_of=False, augmented=True)
            elif isinstance(statement, cst.Return) and statement.value is not None:
                self.function.returned_names.update(names_in(statement.value))
                self.function.returns.append(strip_parens(statement.value))
            self.sites.append(
                Site(
                    statement,
                    self.function,
                    tuple(self._loops[-1]),
                    self._grad_off[-1] > 0,
                    self._next(),
                    node if single else None,
                    tuple(self._blocks),
                    self._previous.get(self._block_key(), None),
                    tuple(self._guards),
                )
            )
            self._previous[self._block_key()] = self.sites[-1]

    def _block_key(self) -> tuple:
        return (id(self.function), tuple(self._blocks))

    def _at_loop_top(self, line: cst.SimpleStatementLine) -> bool:
        loops = self._loops[-1]
        if not loops:
            return False
        body = loops[-1].node.body
        return isinstance(body, cst.IndentedBlock) and any(s is line for s in body.body)

    def _data_source(self, name: str) -> bool:
        """A name bound so far only to a loop element or to a constructed object (a batch, a
        `BidirectionalOneShotIterator(...)`): data a step helper draws its loss from."""
        bindings = self.function.bindings.get(name, ())
        return bool(bindings) and all(b.element_of or constructed(b.value, self.function) for b in bindings)

    def _steps_by_hand(self, call: cst.Call) -> bool:
        """`torch.autograd.grad(loss, model.parameters())` ends a training step as
        `loss.backward()` does: gradients of a module's parameters, with no graph kept. With
        respect to other tensors (a trust region's distribution parameters, atom positions) or
        with `create_graph=True` (a gradient penalty, an inner MAML step) it is part of
        computing a loss."""
        positional = [a.value for a in call.args if a.keyword is None and not a.star]
        inputs = [a.value for a in call.args if a.keyword is not None and a.keyword.value == "inputs"] + positional[1:2]
        if not inputs or creates_graph(call):
            return False
        wrt = strip_parens(inputs[0])
        if isinstance(wrt, cst.Name):
            kinds = {collection_kind(b.value) for b in self.function.bindings.get(wrt.value, ()) if not b.element_of}
        else:
            kinds = {collection_kind(wrt)}
        return bool(kinds) and kinds <= PARAMETER_SOURCES

    def _called(self, receiver: cst.BaseExpression) -> bool:
        """`receiver` (`model`, `self.engine`) was called earlier in this function: an object
        with a forward, such as the DeepSpeed engine of `model.backward(loss)`, not a tensor."""
        receiver = strip_parens(receiver)
        if isinstance(receiver, cst.Name):
            name, of_self = receiver.value, False
        elif m.matches(receiver, m.Attribute(value=m.Name("self"))):
            name, of_self = receiver.attr.value, True
        else:
            return False
        return any(
            c.caller is self.function and c.callee == name and (c.class_name is not None) == of_self for c in self.calls
        )

    def _backpropagates(self, parts: list[cst.CSTNode]) -> None:
        for part in parts:
            self.function.backward_names.update(names_in(part))
            self.function.backpropagated.append(part)
        self.function.backward_calls.append((self._next(), tuple(self._loops[-1])))
        for loop in self._loops[-1]:
            loop.runs_backward = True

    def visit_Call(self, node: cst.Call) -> None:
        if self._lambdas:
            return
        name = attribute_name(node.func)
        if name == "requires_grad_" and isinstance(node.func, cst.Attribute) and is_false_arg(node.args):
            self.frozen.append(node.func.value)
        toggled = toggled_modules(node)
        if toggled is not None:
            self.toggled.append((*toggled, self.function, self._order))
        # `self.backward(...)` is a method of the user's own class (hand-written backprop in
        # numpy code), not autograd's
        # Lightning's `self.manual_backward(loss)` is autograd's
        if (name == "backward" and not m.matches(node.func, m.Attribute(value=m.Name("self")))) or name == "manual_backward":
            # keywords are options (`retain_graph=i < n`, `inputs=params`), never the loss
            parts: list[cst.CSTNode] = [a.value for a in node.args if a.keyword is None]
            # `accelerator.backward(loss)`, `self.fabric.backward(loss)`: the loss is the argument
            if isinstance(node.func, cst.Attribute) and name == "backward" and not (
                parts and (backward_runner(node.func.value) or self._called(node.func.value))
            ):
                parts.append(node.func.value)
            self._backpropagates(parts)
        if name == "grad" and (dotted_text(node.func) or "").endswith("autograd.grad") and self._steps_by_hand(node):
            outputs = [a.value for a in node.args if (a.keyword is None and not a.star) or (a.keyword and a.keyword.value == "outputs")]
            self._backpropagates(outputs[:1])
        stepping_helper = "step" in (name or "") and any(optimizer_like(a.value) for a in node.args)
        if (name == "step" and optimizer_like(node.func)) or stepping_helper:
            # `clip_and_step(optimizer)`, `scaler.step(opt)`'s helpers
            self.function.steps_optimizer = True
            for loop in self._loops[-1]:
                loop.steps_optimizer = True
        if stepping_helper:
            # `net.train_step(loss, optim)`: a helper handed one value beside the optimizer it
            # steps backpropagates that value; handed several (`train_step(net, inputs,
            # labels, optimizer)`) it computes the loss from them, and which is which is unknown
            named = [a.value for a in node.args if isinstance(a.value, cst.Name) and not optimizer_like(a.value)]
            if len(named) == 1 and not self._data_source(named[0].value):
                self._backpropagates(named)
        func = node.func
        if isinstance(func, cst.Name):
            self.function.objects.add(func.value)
        elif isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) and name in MODULE_ONLY_METHODS:
            self.function.objects.add(func.value.value)
        loops = tuple(self._loops[-1])
        if isinstance(func, cst.Attribute) and m.matches(func.value, m.Name("self")):
            self.calls.append(
                Call(self.function, func.attr.value, self.function.class_name, node.args, self._grad_off[-1] > 0, loops)
            )
        elif isinstance(func, cst.Name):
            self.calls.append(Call(self.function, func.value, None, node.args, self._grad_off[-1] > 0, loops))




def returned_elements(function: Function, element_index: int) -> list[cst.BaseExpression] | None:
    """The values `function` returns at `element_index` of the tuples it returns; None when some
    return is no tuple that long (or there is none)."""
    elements = []
    for value in function.returns:
        value = strip_parens(value)
        if not isinstance(value, cst.Tuple) or element_index >= len(value.elements):
            return None
        element = value.elements[element_index]
        if isinstance(element, cst.StarredElement):
            return None
        elements.append(element.value)
    return elements or None


def returned_names(function: Function, element_index: int | None) -> set[str]:
    """The names `function` returns (tuples aside), or with `element_index` the names in that
    element of the tuples it returns."""
    if element_index is not None:
        return {name for element in returned_elements(function, element_index) or () for name in names_in(element)}
    return {name for value in function.returns if not isinstance(strip_parens(value), cst.Tuple) for name in names_in(value)}


def reaches_a_backward(binding: Binding, function: Function) -> bool:
    """The value is bound before a `backward` call, or in a loop around one (where it reaches
    the next iteration's): not only after every backward of the call."""
    return any(
        binding.order < order or any(loop in loops for loop in binding.loops)
        for order, loops in function.backward_calls
    )


def constructed(value: cst.BaseExpression, function: Function) -> bool:
    """A class called by its CamelCase name, then perhaps moved or set up by method calls
    (`Net(cfg).to(device)`): a module, optimizer or data tensor is made and no autograd op
    runs. A `Parameter` is a leaf that gradients reach, so it does not count."""
    value = strip_parens(value)
    while isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute):
        name = value.func.attr.value
        if name[:1].isupper():
            break
        value = strip_parens(value.func.value)
    if not isinstance(value, cst.Call):
        return False
    root = root_name(value.func)
    if root == "self" or root in function.bindings or root in function.params:
        return False  # `self.MLP(x)`, `G_AB = nn.Linear(...); G_AB(x)`: a module instance called
    name = attribute_name(value.func) or ""
    # one capital letter is a module instance as often as a class (`fake = G(z)`)
    return len(name) > 1 and name[0].isupper() and name != "Parameter"
