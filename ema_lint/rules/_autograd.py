"""Shared facts for the autograd-history rules (EMA201, EMA202, EMA203, EMA301).

One plain libcst walk per file, cached by module node, records every statement that could
be an EMA update or an accumulation together with what the rules need to judge it: the
enclosing function and class, the loops around it, whether gradient recording is off
there, and per function the local bindings, the values that are backpropagated and the
parameters that carry autograd history. Nothing is imported or executed.

What "may carry autograd history" means here (precision over recall, documented in
docs/rules-autograd.md): a value derived, without a cut, from a parameter of a
`forward`-like method, from a value that the same function backpropagates, from a
method parameter that such a value is passed to, or from iterating `.parameters()`.
Cuts: `.detach()`, `.item()`, `.tolist()`, `.numpy()`, `.data`, `.grad`, `float()`,
`int()`, `len()`, literals, `.state_dict()` / `.buffers()` elements, the output of a module
set `requires_grad_(False)` in the file, and names that are not local (modules, globals,
hyperparameters read from `self`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import libcst as cst
import libcst.matchers as m

from ema_lint.analysis.names import dotted_text
from ema_lint.analysis.torch_names import (
    CONFIGURATION_CALLS,
    GRAD_OFF_CONTEXTS,
    GRADIENT_NORM_NAME,
    LOGGING_NAME,
    METRIC_NAME,
    MODULE_ONLY_METHODS,
    SCALAR_CASTS,
    NAMED_ITEMS,
    NO_GRAPH_CALLS,
    NUMERIC_LIBRARIES,
    OPTIMIZER_NAME,
    OTHER_FRAMEWORKS,
    VALUES_AND_INDICES,
)
from ema_lint.rule import Rule

# Methods whose tensor arguments are the model's inputs during a training step.
FORWARD_METHODS = frozenset({"forward", "__call__", "training_step", "compute_loss", "_forward"})
# `numel()`, `.shape` and friends describe a tensor; they are plain numbers, never graph nodes.
CUT_METHODS = frozenset(
    {
        "detach",
        "detach_",
        "item",
        "tolist",
        "numpy",
        "numel",
        "size",
        "dim",
        "is_floating_point",
        "argmax",
        "argmin",
        "get_lr",
        "get_last_lr",
        "asscalar",
        "asnumpy",
        # fresh tensors that share only a dtype and device with their argument
        "new_tensor",
        "new_zeros",
        "new_ones",
        "new_full",
        "new_empty",
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "randn_like",
        "rand_like",
    }
)
CUT_ATTRIBUTES = frozenset({"data", "grad", "shape", "ndim", "dtype", "device", "indices"})
# Element kinds of collections an EMA loop iterates over.
PARAMETER_SOURCES = frozenset({"parameters", "named_parameters"})
DETACHED_SOURCES = frozenset({"buffers", "named_buffers", "state_dict"})
TENSOR_COLLECTIONS = PARAMETER_SOURCES | DETACHED_SOURCES
# Reads of a value that never enter a differentiable computation.
LOGGING_CALLS = frozenset({"print", "log", "info", "debug", "warning", "add_scalar", "format", "append"})


def code_of(module: cst.Module, node: cst.CSTNode) -> str:
    return "".join(module.code_for_node(node).split())


def one_line(module: cst.Module, node: cst.CSTNode) -> str:
    """`node`'s code on one line, for messages: `zip(\n    a, b\n)` reads `zip(a, b)`."""
    text = " ".join(module.code_for_node(node).split())
    return text.replace("( ", "(").replace(" )", ")").replace("[ ", "[").replace(" ]", "]").replace(",)", ")")


def strip_parens(node: cst.BaseExpression) -> cst.BaseExpression:
    if isinstance(node, cst.Tuple) or not getattr(node, "lpar", None):
        return node
    return node.with_changes(lpar=(), rpar=())


def is_atom(node: cst.BaseExpression) -> bool:
    """True when `node.detach()` needs no parentheses around `node`."""
    return bool(getattr(node, "lpar", None)) or isinstance(
        node, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)
    )


def detached(module: cst.Module, node: cst.BaseExpression) -> str:
    text = module.code_for_node(node)
    return f"{text}.detach()" if is_atom(node) else f"({text}).detach()"


_SCALAR_TYPES = frozenset({"int", "float", "bool", "str", "complex"})


def _is_scalar_type(annotation: cst.BaseExpression) -> bool:
    """`float`, `Optional[int]`, `int | None`, `Union[int, float]`: a declared plain value."""
    annotation = strip_parens(annotation)
    if isinstance(annotation, cst.Name):
        return annotation.value in _SCALAR_TYPES or annotation.value == "None"
    if isinstance(annotation, cst.BinaryOperation) and isinstance(annotation.operator, cst.BitOr):
        return _is_scalar_type(annotation.left) and _is_scalar_type(annotation.right)
    if isinstance(annotation, cst.Subscript) and attribute_name(annotation.value) in ("Optional", "Union"):
        return all(
            isinstance(element.slice, cst.Index) and _is_scalar_type(element.slice.value)
            for element in annotation.slice
        )
    return False


def attribute_name(func: cst.BaseExpression) -> str | None:
    if isinstance(func, cst.Attribute):
        return func.attr.value
    if isinstance(func, cst.Name):
        return func.value
    return None


def root_name(node: cst.BaseExpression) -> str | None:
    """`self` for `self.a.b`, `x` for `x.data`, `x[0].y`, `x.f()`."""
    while True:
        node = strip_parens(node)
        if isinstance(node, cst.Name):
            return node.value
        if isinstance(node, cst.Attribute):
            node = node.value
        elif isinstance(node, cst.Subscript):
            node = node.value
        elif isinstance(node, cst.Call):
            node = node.func
        else:
            return None


def through_data(node: cst.BaseExpression) -> bool:
    node = strip_parens(node)
    return isinstance(node, cst.Attribute) and node.attr.value == "data"


def is_grad_off_context(expression: cst.BaseExpression) -> bool:
    """`torch.no_grad()`, `no_grad()`, `torch.inference_mode()`, `torch.set_grad_enabled(False)`."""
    if not isinstance(expression, cst.Call):
        return False
    name = attribute_name(expression.func)
    if name in GRAD_OFF_CONTEXTS:
        return True
    if name == "set_grad_enabled" and expression.args:
        value = expression.args[0].value
        return isinstance(value, cst.Name) and value.value == "False"
    return False


def is_grad_off_decorator(decorator: cst.Decorator) -> bool:
    expression = decorator.decorator
    return is_grad_off_context(expression) or attribute_name(expression) in GRAD_OFF_CONTEXTS


def collection_kind(iterable: cst.BaseExpression) -> str | None:
    """`parameters` / `state_dict` / ... when `iterable` yields a module's tensors."""
    iterable = strip_parens(iterable)
    if isinstance(iterable, cst.Call):
        name = attribute_name(iterable.func)
        if name in TENSOR_COLLECTIONS:
            return name
        if name in ("values", "items") and isinstance(iterable.func, cst.Attribute):
            return collection_kind(iterable.func.value)
        if name in ("list", "tuple") and len(iterable.args) == 1:
            return collection_kind(iterable.args[0].value)
    return None


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


class _Collector(cst.BatchableCSTVisitor):
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
        self.toggled: list[tuple[list[cst.BaseExpression], bool]] = []
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
                p.name.value for p in declared if p.annotation is not None and _is_scalar_type(p.annotation.annotation)
            ),
            enclosing=self._scopes[-1] if self._scopes and isinstance(self._scopes[-1], Function) else None,
        )
        # a `forward`'s inputs carry a graph; a plain class's `__call__` (a reward filter, a
        # meter) is no module's forward
        may_be_module = class_name is None or any(
            base not in ("object", "") for base in self.class_bases.get(class_name, ())
        )
        if node.name.value in FORWARD_METHODS and may_be_module:
            function.graph_params.update(n for n in names if n not in ("self", "cls", *function.scalar_params))
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
                    if _freezes(line):
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
                if m.matches(value, m.Call(func=m.Attribute(attr=m.Name("requires_grad_")))) and _is_false_arg(
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
        return bool(bindings) and all(b.element_of or _constructed(b.value, self.function) for b in bindings)

    def _steps_by_hand(self, call: cst.Call) -> bool:
        """`torch.autograd.grad(loss, model.parameters())` ends a training step as
        `loss.backward()` does: gradients of a module's parameters, with no graph kept. With
        respect to other tensors (a trust region's distribution parameters, atom positions) or
        with `create_graph=True` (a gradient penalty, an inner MAML step) it is part of
        computing a loss."""
        positional = [a.value for a in call.args if a.keyword is None and not a.star]
        inputs = [a.value for a in call.args if a.keyword is not None and a.keyword.value == "inputs"] + positional[1:2]
        if not inputs or _creates_graph(call):
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
        if name == "requires_grad_" and isinstance(node.func, cst.Attribute) and _is_false_arg(node.args):
            self.frozen.append(node.func.value)
        toggled = _toggled_modules(node)
        if toggled is not None:
            self.toggled.append(toggled)
        # `self.backward(...)` is a method of the user's own class (hand-written backprop in
        # numpy code), not autograd's
        # Lightning's `self.manual_backward(loss)` is autograd's
        if (name == "backward" and not m.matches(node.func, m.Attribute(value=m.Name("self")))) or name == "manual_backward":
            # keywords are options (`retain_graph=i < n`, `inputs=params`), never the loss
            parts: list[cst.CSTNode] = [a.value for a in node.args if a.keyword is None]
            # `accelerator.backward(loss)`, `self.fabric.backward(loss)`: the loss is the argument
            if isinstance(node.func, cst.Attribute) and name == "backward" and not (
                parts and (_backward_runner(node.func.value) or self._called(node.func.value))
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




def _returned_elements(function: Function, element_index: int) -> list[cst.BaseExpression] | None:
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


def _returned_names(function: Function, element_index: int | None) -> set[str]:
    """The names `function` returns (tuples aside), or with `element_index` the names in that
    element of the tuples it returns."""
    if element_index is not None:
        return {name for element in _returned_elements(function, element_index) or () for name in names_in(element)}
    return {name for value in function.returns if not isinstance(strip_parens(value), cst.Tuple) for name in names_in(value)}


def _backward_runner(receiver: cst.BaseExpression) -> bool:
    """An object whose `backward(loss)` backpropagates its argument (Accelerate, Fabric,
    DeepSpeed engines, fairseq and Lightning wrappers), not a tensor."""
    return re.search(r"accelerator|fabric|engine|optim|trainer|strategy|scaler", _last_name(receiver)) is not None


def _metric_key(lookup: cst.Subscript) -> bool:
    """`d["accuracy"]`: a string key naming a metric or a count."""
    if len(lookup.slice) != 1 or not isinstance(lookup.slice[0].slice, cst.Index):
        return False
    return _metric_key_text(lookup.slice[0].slice.value)


def _metric_key_text(key: cst.BaseExpression) -> bool:
    """A string literal naming a metric or a count (`"accuracy"`, `"n_samples"`)."""
    key = strip_parens(key)
    if not isinstance(key, cst.SimpleString):
        return False
    text = key.evaluated_value
    return isinstance(text, str) and (METRIC_NAME.fullmatch(text) is not None or _names_a_count(text))


def _names_a_count(attribute: str) -> bool:
    """`batch.batch_size`, `x.num_frames`, `seq.lengths`: sizes and counts are integers, and
    an integer tensor never requires grad."""
    return attribute.endswith(("size", "_len", "_length", "_lengths", "_count")) or attribute.startswith(("num_", "n_"))


def _creates_graph(call: cst.Call) -> bool:
    return any(
        a.keyword is not None and a.keyword.value == "create_graph" and not m.matches(a.value, m.Name("False"))
        for a in call.args
    )


def _is_false_arg(args: Sequence[cst.Arg]) -> bool:
    return len(args) == 1 and isinstance(args[0].value, cst.Name) and args[0].value.value == "False"


def _toggled_modules(call: cst.Call) -> tuple[list[cst.BaseExpression], bool] | None:
    """`set_requires_grad([net_d, net_g], False)`, `toggle_grad(model, flag)`,
    `requires_grad(model, require=True)`: the modules a requires-grad helper is handed (its
    first argument, or the items of a list there), and whether it certainly turns them off."""
    name = attribute_name(call.func) or ""
    if not REQUIRES_GRAD_HELPER.fullmatch(name) or len(call.args) < 2 or call.args[0].keyword is not None:
        return None
    first = strip_parens(call.args[0].value)
    modules = [e.value for e in first.elements] if isinstance(first, (cst.List, cst.Tuple)) else [first]
    return modules, all(m.matches(a.value, m.Name("False")) for a in call.args[1:2])


def _freezes(line: cst.BaseStatement) -> bool:
    """`p.requires_grad_(False)` or `p.requires_grad = False` as a loop-body line."""
    if not isinstance(line, cst.SimpleStatementLine):
        return False
    for statement in line.body:
        if isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call):
            call = statement.value
            if attribute_name(call.func) == "requires_grad_" and _is_false_arg(call.args):
                return True
        if isinstance(statement, cst.Assign) and isinstance(statement.value, cst.Name):
            target = statement.targets[0].target
            if attribute_name(target) == "requires_grad" and statement.value.value == "False":
                return True
    return False


# Calls that move or retype a tensor; they keep whatever history it had and add none of
# their own parameters'.
TRANSFER_METHODS = frozenset({"to", "cuda", "cpu", "float", "half", "double", "bfloat16", "long", "int", "contiguous"})


def _indices_of(node: cst.Subscript) -> bool:
    """`t.max(dim)[1]`, `t.topk(k)[1]`, `t.sort()[1]`: the index half of a (values, indices) result."""
    value = strip_parens(node.value)
    return (
        isinstance(value, cst.Call)
        and attribute_name(value.func) in ("max", "min", "topk", "sort", "kthvalue", "mode", "median")
        and len(node.slice) == 1
        and m.matches(node.slice[0].slice, m.Index(value=m.Integer("1")))
    )


def _is_constant(node: cst.BaseExpression) -> bool:
    return isinstance(node, (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString, cst.Integer, cst.Float)) or (
        isinstance(node, cst.Name) and node.value in ("None", "True", "False")
    )


# Builtins that hand back the objects they are given (or containers of them).
# helpers named for what they return: NumPy arrays or plain numbers (`move_to_np`, `to_numpy`,
# `tensors_to_scalars`), never a tensor with history
NUMBER_CONVERTER = re.compile(r"(^|_)(np|numpy|scalars?)$")
# libraries whose functions convert a tensor argument to a NumPy array, which raises for one
# that requires grad
NUMPY_CONVERTING = frozenset({"numpy", "scipy", "sklearn", "pandas"})
# NumPy ufuncs that convert their argument (not `np.ndim` or `np.shape`, which only read it)
CONVERTING_UFUNCS = frozenset({"isnan", "isinf", "isfinite", "isneginf", "isposinf"})
# helpers that set `requires_grad` on a module's parameters from their second argument
REQUIRES_GRAD_HELPER = re.compile(r"(set_|toggle_)?requires_grads?(_to)?|toggle_grads?")
_PASS_THROUGH_CALLS = frozenset({"list", "tuple", "dict", "set", "sorted", "reversed", "min", "max", "next", "iter", "getattr"})


def _made_new(value: cst.BaseExpression) -> bool:
    """Arithmetic or a call that computes a new tensor, not one that may hand back an existing
    one (`outputs[0]`, `x if c else y`, `list(outputs)`)."""
    if isinstance(value, (cst.BinaryOperation, cst.UnaryOperation)):
        return True
    return isinstance(value, cst.Call) and not (
        isinstance(value.func, cst.Name) and value.func.value in _PASS_THROUGH_CALLS
    )


def _leaves_torch(node: cst.BaseExpression) -> bool:
    """`x.numpy()`, `x.cpu().numpy()`, `x.tolist()`: a value handed to non-torch code."""
    return m.matches(node, m.Call(func=m.Attribute(attr=m.Name("numpy") | m.Name("tolist"))))


class _Gather(cst.CSTVisitor):
    """Names and attribute chains under a node; a small walk, cheaper than `matchers.findall`."""

    def __init__(self) -> None:
        self.nodes: list[cst.Name | cst.Attribute] = []

    def visit_Name(self, node: cst.Name) -> None:
        self.nodes.append(node)

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self.nodes.append(node)


class _Calls(cst.CSTVisitor):
    def __init__(self) -> None:
        self.calls: list[cst.Call] = []

    def visit_Call(self, node: cst.Call) -> bool:
        self.calls.append(node)
        # the arguments of a cut are cut too: `float(loss)` holds no call that matters
        return attribute_name(node.func) not in CUT_METHODS | SCALAR_CASTS


def _calls_in(node: cst.CSTNode) -> list[cst.Call]:
    calls = _Calls()
    node.visit(calls)
    return calls.calls


def names_and_attributes(node: cst.CSTNode) -> list[cst.Name | cst.Attribute]:
    gather = _Gather()
    node.visit(gather)
    return gather.nodes


def names_in(node: cst.CSTNode) -> set[str]:
    return {n.value for n in names_and_attributes(node) if isinstance(n, cst.Name)}


class FileFacts:
    """Everything the autograd rules read about one module."""

    def __init__(
        self, module: cst.Module, collector: "_Collector", returns_no_graph: Callable[[str], bool] = lambda dotted: False
    ) -> None:
        self.module = module
        # `returns_no_graph(dotted)`: the project knows the called function returns no history
        self._returns_no_graph = returns_no_graph
        self.functions = collector.functions
        self.sites = collector.sites
        self.calls = collector.calls
        self.class_bases = collector.class_bases
        self.numeric_names = collector.numeric_names
        self.array_names = collector.array_names
        # imports another framework and not torch: no torch autograd state in this file
        self.foreign = "torch" not in collector.imported_roots and bool(collector.imported_roots & OTHER_FRAMEWORKS)
        # a module a helper turns gradients off for is frozen, unless the file also turns them
        # back on for it (a GAN toggling its discriminator between the two steps)
        toggled_off = {code_of(module, n) for nodes, off in collector.toggled if off for n in nodes}
        toggled_on = {code_of(module, n) for nodes, off in collector.toggled if not off for n in nodes}
        self.frozen = {code_of(module, node) for node in collector.frozen} | (toggled_off - toggled_on)
        self._code: dict[int, str] = {}
        self._carrying: dict[Function, set[str]] = {}
        # functions whose returns are being judged (recursion guard)
        self._judging: set[Function] = set()
        self._by_name: dict[tuple[str | None, str], list[Function]] = {}
        for function in collector.functions:
            if function.node is not None:
                self._by_name.setdefault((function.class_name, function.name), []).append(function)
        self._propagate_grad_free(collector.calls)
        self._mark_loops_that_train(collector.calls)
        self._mark_backpropagated_outputs()
        # after the outputs: what a caller backpropagates is the returned value, not what the
        # callee computed it from (`losses[key] = value.item()` may have made those numbers)
        returning = self._backpropagate_returns()
        # in a function whose result its caller backpropagates, every earlier binding reaches
        # that backward: the module outputs the returned loss is computed from recorded a graph
        self._mark_backpropagated_outputs(returning)
        self._propagate_graph_params(collector.calls)

    @functools.cached_property
    def recurrences(self) -> "list[Recurrence]":
        return find_recurrences(self)

    def code(self, node: cst.CSTNode) -> str:
        key = id(node)
        if key not in self._code:
            self._code[key] = code_of(self.module, node)
        return self._code[key]

    def _propagate_grad_free(self, calls: list[Call]) -> None:
        """A function runs with gradients off when it is decorated so, or when every call to it
        in this file (there is at least one) is under a grad-off context or in such a function."""
        for function in self.functions:
            function.grad_free = function.grad_off_decorated
        by_key: dict[tuple[str | None, str], list[Function]] = {}
        for function in self.functions:
            if function.node is not None:
                by_key.setdefault((function.class_name, function.name), []).append(function)
        callers: dict[int, list[Call]] = {}
        for call in calls:
            for callee in by_key.get((call.class_name, call.callee), ()):
                callers.setdefault(id(callee), []).append(call)
        changed = True
        while changed:
            changed = False
            for function in self.functions:
                sites = callers.get(id(function))
                if function.grad_free or not sites:
                    continue
                if all(call.grad_off or call.caller.grad_free for call in sites):
                    function.grad_free = True
                    changed = True

    def _mark_loops_that_train(self, calls: list[Call]) -> None:
        """A loop runs backward when it calls, through functions of this file, one that calls
        `backward` (`for batch in loader: loss = train_step(batch)`); likewise for stepping
        an optimizer."""
        trains = {function for function in self.functions if function.backward_names}
        steps = {function for function in self.functions if function.steps_optimizer}
        changed = True
        while changed:
            changed = False
            for call in calls:
                callees = self._by_name.get((call.class_name, call.callee), ())
                if len(callees) != 1:
                    continue
                if callees[0] in trains:
                    for loop in call.loops:
                        loop.runs_backward = True
                    if call.caller not in trains:
                        trains.add(call.caller)
                        changed = True
                if callees[0] in steps:
                    for loop in call.loops:
                        loop.steps_optimizer = True
                    if call.caller not in steps:
                        call.caller.steps_optimizer = True
                        steps.add(call.caller)
                        changed = True

    def _propagate_graph_params(self, calls: list[Call]) -> None:
        by_key = {(f.class_name, f.name): f for f in self.functions if f.node is not None}
        for _ in range(3):
            changed = False
            for call in calls:
                callee = by_key.get((call.class_name, call.callee))
                if callee is None or call.grad_off or call.caller.grad_free:
                    continue
                params = [p for p in callee.params if p not in ("self", "cls")]
                for index, arg in enumerate(call.args):
                    if arg.keyword is not None:
                        name = arg.keyword.value
                    elif arg.star or index >= len(params):
                        continue
                    else:
                        name = params[index]
                    if name in callee.objects:
                        continue  # `train(model, ...)` calling `model(x)`: a module, not a tensor
                    if name not in callee.graph_params and self.may_carry_graph(arg.value, call.caller):
                        callee.graph_params.add(name)
                        changed = True
            self._carrying.clear()
            if not changed:
                return

    def _backpropagate_returns(self) -> None:
        """`loss = compute(x)` then `loss.backward()`, with `compute` a function of this file (a
        closure in the training function, a `self.` method): the names `compute` returns are
        backpropagated too, in `compute`. Returns the functions that gained names."""
        gained: list[Function] = []
        changed = True
        while changed:
            changed = False
            for function in self.functions:
                for name in list(function.backward_names):
                    for binding in function.bindings.get(name, ()):
                        if binding.element_of:
                            continue
                        value = strip_parens(binding.value)
                        callee = self._callee(value) if isinstance(value, cst.Call) else None
                        if callee is None:
                            continue
                        returned = _returned_names(callee, binding.element_index)
                        if not returned <= callee.backward_names:
                            callee.backward_names |= returned
                            changed = True
                            if callee not in gained:
                                gained.append(callee)
        return gained

    def _mark_backpropagated_outputs(self, returning: list[Function] | None = None) -> None:
        """Names the backpropagated value is computed from, when bound to a call's result
        (`out = model(x)`, then `loss = criterion(out, y)`; `loss.backward()`): such a call
        recorded a graph, since a gradient flows through it. Names bound to loop elements
        (`x, y` from a loader) or to device/dtype moves (`y = y.to(device)`) are not marked.
        `returning`: functions whose returned names a caller backpropagates, after the return."""
        for function in self.functions if returning is None else returning:
            function.feeds_backward = self._feeding_backward(function)
            frontier, upstream = list(function.backward_names), set(function.backward_names)
            while frontier:
                name = frontier.pop()
                for binding in function.bindings.get(name, ()):
                    if binding.element_of or _constructed(binding.value, function):
                        continue
                    if returning is None and not _reaches_a_backward(binding, function):
                        # `weights = model.reweigh(weights, totals)` after the training loop
                        # feeds the next call's steps, not this call's
                        continue
                    if isinstance(strip_parens(binding.value), cst.Call) and not self._produces_graph(binding, name, function):
                        continue  # `args = parser.parse_args()`: what made the settings made no graph
                    for used in names_in(binding.value) - upstream:
                        if _names_a_count(used):
                            continue  # `decode_lengths` beside the scores: sizes, integers
                        upstream.add(used)
                        frontier.append(used)
            for name in upstream - function.backward_names:
                if returning is not None and name in function.returned_names:
                    # what the function also returns is judged by its value there (a dict of
                    # losses a loop turns into `.item()` numbers before returning it)
                    continue
                bindings = function.bindings.get(name, ())
                if bindings and all(self._produces_graph(b, name, function) for b in bindings):
                    function.backward_names.add(name)
                    self._carrying.clear()

    def _feeding_backward(self, function: Function) -> set[str]:
        """The text of the names and attribute chains whose values flow, by arithmetic and
        torch functions, into what is backpropagated (`buf` for `torch.stack(buf).mean()`).
        Not through a call to an object the function holds (`model.update(w, dist)`): what
        comes out of a module or a helper is a new value, not the accumulated one."""
        held = set(function.bindings) | set(function.params) | {"self"}
        feeding: set[str] = set()
        frontier = list(function.backpropagated)
        while frontier:
            for read in _data_reads(frontier.pop(), held):
                code = self.code(read)
                if code in feeding:
                    continue
                feeding.add(code)
                if isinstance(read, cst.Name):
                    # `loss = total / n` after the training loop feeds no backward of the loop
                    frontier.extend(
                        b.value
                        for b in function.bindings.get(read.value, ())
                        if not b.element_of and _reaches_a_backward(b, function)
                    )
        return feeding

    def _produces_graph(self, binding: Binding, name: str, function: Function) -> bool:
        """Whether a call's result, upstream of a backpropagated value, recorded a graph. Not
        a call fed only inert values (`parse_args()`, `tyro.cli(Args)`, `max(5, int(n))`:
        configuration and counts), nor one fed NumPy values (`envs.step(a.cpu().numpy())`:
        torch modules take no NumPy arrays, so that is an environment or a metric)."""
        value = strip_parens(binding.value)
        if binding.element_of or not isinstance(value, cst.Call) or binding.grad_off:
            return False
        if attribute_name(value.func) in TRANSFER_METHODS | CUT_METHODS | SCALAR_CASTS | {"next", "iter"}:
            return False  # `batch = next(loader_iter)` fetches data
        if _constructed(value, function):
            return False  # `model = Net(...).to(device)`, `torch.LongTensor(labels)`: no recorded op
        if attribute_name(value.func) in CONFIGURATION_CALLS:
            return False
        arguments = self._call_inputs(value, name, function)
        if arguments and all(self._inert(a, function, {name}) for a in arguments):
            return False
        return not any(_leaves_torch(a) for a in arguments)

    @staticmethod
    def _call_inputs(call: cst.Call, name: str, function: Function) -> list[cst.BaseExpression]:
        """What a call bound to `name` computes from: its arguments, and the value a method runs
        on (`criterion(out, y).mean(dim=0)`), but not the name's own earlier value (`ce =
        ce.mean()` is judged as it was), a module the function calls (`model.kl_loss()`) or an
        imported module (`tyro.cli(Args)`)."""
        inputs = [strip_parens(a.value) for a in call.args]
        if isinstance(call.func, cst.Attribute):
            receiver = strip_parens(call.func.value)
            if not isinstance(receiver, cst.Name) or (
                (receiver.value in function.bindings or receiver.value in function.params)
                and receiver.value != name
                and receiver.value not in function.objects
            ):
                inputs.append(receiver)
        return inputs

    def _numpy_valued(self, node: cst.BaseExpression, function: Function, seen: set[str]) -> bool:
        """`x.cpu().numpy()`, `np.array(...)`, or a local name bound only to such values."""
        node = strip_parens(node)
        if _leaves_torch(node):
            return True
        if isinstance(node, cst.Call) and (dotted_text(node.func) or "").partition(".")[0] in ("np", "numpy"):
            return True
        if isinstance(node, cst.Name) and node.value not in seen:
            bindings = function.bindings.get(node.value)
            seen.add(node.value)
            return bool(bindings) and all(
                not b.element_of and self._numpy_valued(b.value, function, seen) for b in bindings
            )
        return False

    def _inert(self, node: cst.BaseExpression, function: Function, seen: set[str]) -> bool:
        """A value no graph can come from: constants, numbers cast from anything, classes,
        and names (local, else module-level) bound only to such values or to calls of them."""
        node = strip_parens(node)
        if _is_constant(node):
            return True
        if isinstance(node, cst.Call):
            if isinstance(node.func, cst.Name) and node.func.value in SCALAR_CASTS:
                return True
            if attribute_name(node.func) in CUT_METHODS:
                return True
            return False
        if isinstance(node, cst.Attribute):
            return self._inert(node.value, function, seen)
        if isinstance(node, (cst.BinaryOperation, cst.UnaryOperation)):
            parts = [node.left, node.right] if isinstance(node, cst.BinaryOperation) else [node.expression]
            return all(self._inert(part, function, seen) for part in parts)
        if isinstance(node, cst.Name):
            if node.value in seen or node.value in self.class_bases:
                return True
            if node.value in function.params:
                return False
            scope = function if node.value in function.bindings else self.functions[0]
            bindings = scope.bindings.get(node.value)
            if not bindings:
                return False
            seen = seen | {node.value}
            return all(
                not binding.element_of
                and (
                    self._inert(binding.value, scope, seen)
                    or (
                        isinstance(strip_parens(binding.value), cst.Call)
                        and all(self._inert(v, scope, seen) for v in self._call_inputs(strip_parens(binding.value), node.value, scope))
                    )
                )
                for binding in bindings
            )
        return False

    def reset_before(self, site: Site, code: str) -> bool:
        """`code` is assigned earlier in every call of the site's function: in the same or an
        enclosing block, not in a branch such as a lazy `if self.avg is None:`."""
        return any(
            isinstance(other.statement, cst.Assign)
            and other.order < site.order
            and site.blocks[: len(other.blocks)] == other.blocks
            and any(self.code(strip_parens(t.target)) == code for t in other.statement.targets)
            for other in self.sites
            if other.function is site.function
        )

    def loss_cut_before(self, site: Site, name: str) -> bool:
        """Every part of `name` the function backpropagates (`out["loss"]` of
        `out["loss"].backward()`) is rebound before `site`, in its block or an enclosing one, to
        a value without history (`out["loss"] = out["loss"].detach()`): the one graph the
        record was known to hold is cut, and the rest is taken for what it is by convention,
        numbers for a logger."""
        parts = [strip_parens(b) for b in site.function.backpropagated if root_name(b) == name]
        if not parts or any(isinstance(part, cst.Name) for part in parts):
            return False
        cut = {
            self.code(strip_parens(other.statement.targets[0].target))
            for other in self.sites
            if other.function is site.function
            and isinstance(other.statement, cst.Assign)
            and len(other.statement.targets) == 1
            and other.order < site.order
            and site.blocks[: len(other.blocks)] == other.blocks
            and not self.may_carry_graph(other.statement.value, site.function)
        }
        return all(self.code(part) in cut for part in parts)

    def may_carry_graph_at(self, node: cst.BaseExpression, site: Site) -> bool:
        """`may_carry_graph`, with a plain name judged by the binding that reaches `site` when
        one dominates it (`loss.backward(); loss = loss.item(); total += loss`)."""
        node = strip_parens(node)
        function = site.function
        if isinstance(node, cst.BinaryOperation):
            return self.may_carry_graph_at(node.left, site) or self.may_carry_graph_at(node.right, site)
        if isinstance(node, cst.Name):
            if node.value in function.backward_names and self.loss_cut_before(site, node.value):
                return False
            if self._checked_by_numpy(node.value, site):
                return False
            dominating = [
                b
                for b in function.bindings.get(node.value, ())
                if b.order < site.order and site.blocks[: len(b.blocks)] == b.blocks and not b.element_of
            ]
            if any(b.augmented for b in dominating):
                dominating = []  # `loss *= n` keeps what `loss` held: no single binding decides
            reaching = max(dominating, key=lambda b: b.order) if dominating else None
            if reaching is not None and any(
                reaching.order < b.order < site.order
                # a later binding in a loop around the use, not around `reaching`, reaches the
                # use on the loop's next iteration
                or (b.order > site.order and set(b.loops) & (set(site.loops) - set(reaching.loops)))
                for b in function.bindings.get(node.value, ())
            ):
                reaching = None  # a binding in a nested block may reach the use instead
            if reaching is not None:
                if reaching.element_index is None and self._never_carries(reaching.value, function, {node.value}):
                    return False
                names: set[str] = set()
                if (
                    node.value not in function.graph_params | function.backward_names
                    and reaching.element_index is None
                    and not self._binding_sources(reaching, names, function)
                ):
                    return not names.isdisjoint(self._carrying_names(function))
        return self.may_carry_graph(node, function)

    def _checked_by_numpy(self, name: str, site: Site) -> bool:
        """An `if` around the site has certainly handed `name` itself to a NumPy ufunc that
        converts it (`if not np.isnan(v):`, `if np.isfinite(v) and ...`), which raises for a
        tensor that requires grad: where the site runs, `name` holds no graph."""
        return any(
            root_name(call.func) in self.array_names
            and attribute_name(call.func) in CONVERTING_UFUNCS
            and any(m.matches(strip_parens(a.value), m.Name(name)) for a in call.args)
            for guard in site.guards
            for call in _evaluated_calls(guard)
        )

    def may_carry_graph(self, node: cst.BaseExpression, function: Function) -> bool:
        names: set[str] = set()
        return self._sources(node, names) or not names.isdisjoint(self._carrying_names(function))

    def _carrying_names(self, function: Function) -> set[str]:
        """The local names that may carry autograd history: the least set holding the graph
        parameters and backpropagated names, and every name with a binding that carries
        history itself or reads a name of the set. Solved once per function (a chain or cycle
        of bindings costs linear time) and kept until some function's facts grow: a binding
        to a call of this file carries what the callee's returns carry."""
        if function in self._carrying:
            return self._carrying[function]
        carrying = (function.graph_params | function.backward_names) - function.objects
        readers: dict[str, list[str]] = {}
        for name, bindings in function.bindings.items():
            if name in carrying or name in function.objects:
                continue
            for binding in bindings:
                read: set[str] = set()
                if self._binding_sources(binding, read, function):
                    carrying.add(name)
                    break
                for source in read:
                    readers.setdefault(source, []).append(name)
        pending = list(carrying)
        while pending:
            for reader in readers.get(pending.pop(), ()):
                if reader not in carrying:
                    carrying.add(reader)
                    pending.append(reader)
        self._carrying[function] = carrying
        return carrying

    def _binding_sources(self, binding: Binding, names: set[str], function: Function) -> bool:
        """Like `_sources`, for the value one binding gives its name."""
        if binding.element_index is not None:
            func = strip_parens(binding.value).func
            if binding.element_index == 1 and isinstance(func, cst.Attribute) and func.attr.value in VALUES_AND_INDICES:
                return False  # `_, preds = torch.max(out, 1)`: positions, integers without history
            callee = self._callee(strip_parens(binding.value))
            elements = _returned_elements(callee, binding.element_index) if callee is not None else None
            if elements is not None and all(self._never_carries(e, callee, set()) for e in elements):
                # `info = Tracker()` filled with `.item()` numbers, however the rest is made
                return False
            if elements is not None and callee not in self._judging:
                # `loss, info = self.compute(x)`: `info` is what `compute` returns second
                self._judging.add(callee)
                try:
                    return any(self.may_carry_graph(element, callee) for element in elements)
                finally:
                    self._judging.discard(callee)
            beside_the_loss = self.beside_the_loss(binding, function)
            if beside_the_loss is not None:
                # the call recorded a graph, since a gradient flows through it, so what comes
                # beside the loss carries it too; under a logging, metric or count name
                # (`logs`, `log_vars`, `acc`, `sample_size`) it is numbers for a logger, by the
                # convention of the trainers that return it
                return not (
                    LOGGING_NAME.fullmatch(beside_the_loss)
                    or METRIC_NAME.fullmatch(beside_the_loss)
                    or _names_a_count(beside_the_loss)
                )
        if binding.grad_off and not binding.element_of and _made_new(strip_parens(binding.value)):
            return False  # computed with gradients off: a new tensor without history
        if binding.element_of:
            kind = collection_kind(binding.value)
            if kind in PARAMETER_SOURCES:
                owner = strip_parens(binding.value)
                while isinstance(owner, cst.Call) and attribute_name(owner.func) in ("list", "tuple"):
                    owner = owner.args[0].value
                return self.code(owner.func.value) not in self.frozen
            if kind in DETACHED_SOURCES:
                return False
            if attribute_name(strip_parens(binding.value)) == "param_groups":
                return False  # an optimizer's settings: learning rates and momenta
        elif isinstance(strip_parens(binding.value), cst.Call) and any(
            self._numpy_valued(a.value, function, set()) for a in strip_parens(binding.value).args
        ):
            return False  # `obs, reward, done, info = envs.step(action.cpu().numpy())`
        return self._sources(binding.value, names)

    def _callee(self, call: cst.Call) -> Function | None:
        """The one function of this file that `f(...)` or `self.f(...)` calls, if any."""
        if isinstance(call.func, cst.Name):
            candidates = self._by_name.get((None, call.func.value), ())
        elif m.matches(call.func, m.Attribute(value=m.Name("self"))):
            candidates = [
                f for (owner, name), found in self._by_name.items() if owner is not None and name == call.func.attr.value
                for f in found
            ]
        else:
            return None
        return candidates[0] if len(candidates) == 1 else None

    def beside_the_loss(self, binding: Binding, function: Function) -> str | None:
        """The name `binding` gives, when it unpacks a call not of this file beside a
        backpropagated value (`logits, loss = model(x)`, `loss.backward()`)."""
        call = strip_parens(binding.value)
        if self._callee(call) is not None:
            return None  # read from the function itself
        names: set[str] = set()
        if not self._sources(call, names) and not names:
            return None  # `a, b = stats.tolist()`: nothing in it can carry a graph
        unpacked = [
            (name, other)
            for name, bindings in function.bindings.items()
            for other in bindings
            if other.value is binding.value and other.element_index is not None
        ]
        own = next(name for name, other in unpacked if other is binding)
        if own in function.backward_names or not any(
            name in function.backward_names for name, other in unpacked if other is not binding
        ):
            return None
        return own

    def _never_carries(self, node: cst.BaseExpression, function: Function, seen: set[str]) -> bool:
        """True when `node` is made only of values that cannot hold a graph: literals, cut
        values, and local names bound only to such values (no parameter, no loop element)."""
        names: set[str] = set()
        if self._sources(node, names) or not self._only_fresh_calls(node):
            return False
        for name in names - seen:
            seen.add(name)
            if name in function.params or name in function.graph_params or name in function.backward_names:
                return False
            bindings = function.bindings.get(name)
            if not bindings:
                return False
            for binding in bindings:
                # `a, b = stats.tolist()`: judged by the whole unpacked value
                if binding.element_of:
                    return False
                if not self._never_carries(binding.value, function, seen):
                    return False
        return True

    def _only_fresh_calls(self, node: cst.BaseExpression) -> bool:
        """Every call in `node` gives a number or a new object: a cast, a cut method
        (`.item()`), a numeric library, or a class built from nothing (`Tracker()`); an
        unknown call (`closure()`) may return a graph."""
        for call in _calls_in(node):
            name = attribute_name(call.func) or ""
            if isinstance(call.func, cst.Name) and (name in SCALAR_CASTS or (name[:1].isupper() and not call.args)):
                continue
            if name in CUT_METHODS or root_name(call.func) in self.numeric_names:
                continue
            return False
        return True

    def _sources(self, node: cst.BaseExpression, names: set[str]) -> bool:
        """True when `node` carries autograd history whatever its names hold; else adds to
        `names` the local names it carries history from, if they carry any."""
        node = strip_parens(node)
        if isinstance(node, cst.Name):
            if GRADIENT_NORM_NAME.fullmatch(node.value):
                return False  # measured from `.grad`, which holds no history
            names.add(node.value)
            return False
        if isinstance(node, cst.Attribute):
            if node.attr.value in CUT_ATTRIBUTES or root_name(node) == "self" or _names_a_count(node.attr.value):
                return False
            return self._sources(node.value, names)
        if isinstance(node, cst.Call):
            name = attribute_name(node.func)
            if isinstance(node.func, cst.Name) and name in SCALAR_CASTS:
                return False
            if root_name(node.func) in self.numeric_names:
                return False  # `roc_auc_score(...)`, `np.mean(...)`: a NumPy array or a number
            if name in NO_GRAPH_CALLS:
                return False  # `grad_norm = clip_grad_norm_(model.parameters(), 1.0)`
            if isinstance(node.func, cst.Attribute) and isinstance(
                node.func.value, (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString)
            ):
                return False  # `"loss {:.3f}".format(loss)`: a string
            dotted = dotted_text(node.func)
            if dotted is not None and self._returns_no_graph(dotted):
                return False  # `acc1, acc5 = accuracy(output, target, topk=(1, 5))`
            if isinstance(node.func, (cst.Name, cst.Attribute)) and NUMBER_CONVERTER.search((name or "").lower()):
                return False  # `du.move_to_np(v)`, `tensors_to_scalars(logs)`: arrays and numbers by name
            callee = self._callee(node)
            if callee is not None and callee.returns and callee not in self._judging:
                # a function of this file: its result carries a graph when what it returns does
                self._judging.add(callee)
                try:
                    return any(self.may_carry_graph(value, callee) for value in callee.returns)
                finally:
                    self._judging.discard(callee)
            if self.code(node.func) in self.frozen:
                return False  # a module set `requires_grad_(False)`: a frozen teacher's output
            if name == "grad" and isinstance(node.func, cst.Attribute) and not _creates_graph(node):
                return False  # `torch.autograd.grad(...)` returns gradients without history
            if isinstance(node.func, cst.Attribute):
                if name in CUT_METHODS:
                    return False
                if name in PARAMETER_SOURCES:
                    return self.code(node.func.value) not in self.frozen
                if self._sources(node.func.value, names):
                    return True
            return any(self._sources(a.value, names) for a in node.args)
        if isinstance(node, cst.Subscript):
            if _indices_of(node):
                return False  # `x.max(dim=1)[1]`: integer positions, never differentiable
            if _metric_key(node):
                return False  # `outputs["accuracy"]`, `logs["n_correct"]`: numbers for a logger
            return self._sources(node.value, names)
        if isinstance(node, cst.BinaryOperation):
            return self._sources(node.left, names) or self._sources(node.right, names)
        if isinstance(node, cst.UnaryOperation):
            return self._sources(node.expression, names)
        if isinstance(node, cst.IfExp):
            if self._not_a_tensor_otherwise(node):
                return self._sources(node.body, names)
            return self._sources(node.body, names) or self._sources(node.orelse, names)
        if isinstance(node, (cst.Tuple, cst.List)):
            return any(self._sources(e.value, names) for e in node.elements)
        if isinstance(node, cst.Dict):
            # `history.append({"out": out, "loss": loss})`: a record holds what its values hold
            return any(
                self._sources(e.value, names)
                for e in node.elements
                if isinstance(e, cst.DictElement) and not _metric_key_text(e.key)
            )
        return False

    def _not_a_tensor_otherwise(self, choice: cst.IfExp) -> bool:
        """`x.item() if hasattr(x, "item") else x`, `... if torch.is_tensor(x) else x`: the
        `else` value is `x` only when `x` is no tensor, so it holds no graph."""
        test = strip_parens(choice.test)
        if not isinstance(test, cst.Call) or not test.args:
            return False
        tested = self.code(strip_parens(test.args[0].value))
        if self.code(strip_parens(choice.orelse)) != tested:
            return False
        name = attribute_name(test.func)
        if name == "hasattr" and len(test.args) == 2:
            attribute = strip_parens(test.args[1].value)
            return isinstance(attribute, cst.SimpleString) and attribute.evaluated_value in ("item", "detach")
        if name == "isinstance" and len(test.args) == 2:
            return self.code(strip_parens(test.args[1].value)) in ("torch.Tensor", "Tensor")
        return name == "is_tensor" and len(test.args) == 1

    def reads(self, scope: cst.CSTNode, target: str) -> list[tuple[cst.CSTNode, bool]]:
        """Every read of the expression `target` inside `scope`, each with whether it can
        enter a differentiable computation."""
        finder = _ReadFinder(self, target)
        scope.visit(finder)
        return finder.found


class _ReadFinder(cst.CSTVisitor):
    def __init__(self, facts: FileFacts, target: str) -> None:
        self.facts = facts
        self.target = target
        self.found: list[tuple[cst.CSTNode, bool]] = []
        self._inert = 0
        self._entered: set[int] = set()

    def _inert_node(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.With):
            return any(is_grad_off_context(item.item) for item in node.items)
        if isinstance(node, cst.FunctionDef):
            return any(is_grad_off_decorator(d) for d in node.decorators)
        if isinstance(node, (cst.FormattedString, cst.Comparison)):
            return True
        if isinstance(node, cst.Call):
            name = attribute_name(node.func)
            return name in SCALAR_CASTS or name in LOGGING_CALLS
        if isinstance(node, cst.Attribute):
            return node.attr.value in CUT_METHODS | CUT_ATTRIBUTES
        return False

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.AssignTarget):
            return False
        if self._inert_node(node):
            self._entered.add(id(node))
            self._inert += 1
        if isinstance(node, (cst.Name, cst.Attribute)) and self.facts.code(node) == self.target:
            self.found.append((node, self._inert == 0))
            return False
        return True

    def on_leave(self, original_node: cst.CSTNode) -> None:
        if id(original_node) in self._entered:
            self._entered.discard(id(original_node))
            self._inert -= 1


class AutogradRule(Rule):
    """Base of the rules that read `FileFacts`; they judge the whole file in `check`."""

    COLLECTORS = (_Collector,)

    def leave_Module(self, original_node: cst.Module) -> None:
        context = self.context
        facts = context.derived(
            FileFacts,
            lambda: FileFacts(
                original_node,
                context.collected(_Collector),
                lambda dotted: context.project.returns_no_graph(context.module_name, dotted),
            ),
        )
        if not facts.foreign:
            self.check(facts)

    def check(self, facts: FileFacts) -> None:
        raise NotImplementedError


class RecurrenceRule(AutogradRule):
    """Base of the rules whose every finding is a recognised EMA step (`find_recurrences`):
    a file whose phase-1 facts show no statement of that shape is never parsed for them."""

    @classmethod
    def structurally_possible(cls, project, module_name: str) -> bool:
        facts = project.modules.get(module_name)
        return facts is None or facts.may_hold_recurrence


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
        if isinstance(target, cst.Subscript) and _moving_index(target):
            # `metrics_g[LOSS, start:end] = loss_g`: each step writes another slot of one
            # container, which then holds every step's value (a tensor links their graphs)
            return Accumulation(site, target.value, statement.value)
    return None


def _evaluated_calls(test: cst.BaseExpression) -> list[cst.Call]:
    """The calls a test certainly evaluated when it held: the test itself, under `not`, and
    every operand of an `and` (an `or` may stop before any one of them)."""
    test = strip_parens(test)
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        return _evaluated_calls(test.expression)
    if isinstance(test, cst.BooleanOperation) and isinstance(test.operator, cst.And):
        return _evaluated_calls(test.left) + _evaluated_calls(test.right)
    return [test] if isinstance(test, cst.Call) else []


def _moving_index(lookup: cst.Subscript) -> bool:
    """A slice with a computed bound (`buf[LOSS, start:end]`): each step writes another stretch
    of one tensor. A key or a constant index overwrites a slot (`last[name] = value` over a
    fixed set of names, `buf[0] = x`), which keeps at most one value per slot."""
    for element in lookup.slice:
        index = element.slice
        if isinstance(index, cst.Slice):
            bounds = [b for b in (index.lower, index.upper) if b is not None]
            if any(not _is_constant(strip_parens(b)) for b in bounds):
                return True
    return False


def _reaches_a_backward(binding: Binding, function: Function) -> bool:
    """The value is bound before a `backward` call, or in a loop around one (where it reaches
    the next iteration's): not only after every backward of the call."""
    return any(
        binding.order < order or any(loop in loops for loop in binding.loops)
        for order, loops in function.backward_calls
    )


def _data_reads(node: cst.BaseExpression, held: set[str]) -> list[cst.Name | cst.Attribute]:
    """The names and attribute chains `node` computes from, not looking into the arguments
    of a call to something rooted at a name in `held` (a module or helper the function holds)."""
    node = strip_parens(node)
    if isinstance(node, (cst.Name, cst.Attribute)):
        return [node]
    if isinstance(node, cst.Call):
        func = strip_parens(node.func)
        reads = _data_reads(func.value, held) if isinstance(func, cst.Attribute) else []
        if isinstance(func, (cst.Name, cst.Attribute)) and root_name(func) in held:
            return reads
        return reads + [r for a in node.args for r in _data_reads(a.value, held)]
    found = []
    pending = list(node.children)
    while pending:
        child = pending.pop()
        if isinstance(child, cst.BaseExpression):
            found += _data_reads(child, held)
        else:
            pending.extend(child.children)
    return found


def _constructed(value: cst.BaseExpression, function: Function) -> bool:
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


def steps_an_optimizer(statement: cst.CSTNode) -> bool:
    """`optimizer.step()`, `self.opt_d.step()`, `scaler.step(optimizer)` as a statement."""
    if not (isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call)):
        return False
    call = statement.value
    return attribute_name(call.func) == "step" and (
        optimizer_like(call.func) or any(optimizer_like(a.value) for a in call.args)
    )


def optimizer_like(node: cst.BaseExpression) -> bool:
    """The receiver of `optimizer.step()`, `self.opt_d.step()`, `optimizers[0].step()`,
    `scaler.step(optimizer)` (given the method), or an optimizer itself (given a value): not a
    scheduler's or an environment's `step`."""
    node = strip_parens(node)
    if isinstance(node, cst.Attribute) and node.attr.value == "step":
        node = node.value
    return OPTIMIZER_NAME.search(_last_name(node)) is not None


def _last_name(node: cst.BaseExpression) -> str:
    """`opt_d` for `self.opt_d`, `optimizers` for `optimizers[0]`, lower-cased; "" for other
    expressions."""
    node = strip_parens(node)
    while isinstance(node, cst.Subscript):
        node = strip_parens(node.value)
    if isinstance(node, cst.Attribute):
        return node.attr.value.lower()
    return node.value.lower() if isinstance(node, cst.Name) else ""


def whole_tensor(lookup: cst.Subscript) -> bool:
    """`t[:]` / `t[...]`: every element of the tensor."""
    if len(lookup.slice) != 1:
        return False
    part = lookup.slice[0].slice
    if isinstance(part, cst.Slice):
        return part.lower is None and part.upper is None and part.step is None
    return isinstance(part, cst.Index) and isinstance(part.value, cst.Ellipsis)


def find_recurrences(facts: FileFacts) -> list[Recurrence]:
    shapes = _Shapes(facts)
    return [r for r in map(shapes.statement_recurrence, facts.sites) if r is not None]
