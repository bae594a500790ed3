"""The submodules an untraceable forward checkpoints, read from its class's source.

Where torch.fx cannot run a forward, its source still says which submodules it hands to a
checkpoint entry point: `checkpoint(self.block, x)`, `checkpoint_seq(self.blocks, x)`,
`for blk in self.blocks: x = checkpoint(blk, x)`, `self._gradient_checkpointing_func(
layer.__call__, ...)` in an encoder loop, `cp.checkpoint(_inner_forward, x)` whose inner
function calls `self.conv1` and `self.norm1`, or a method given by name. A call counts when
the conditions around it hold on the live module (`if self.grad_checkpointing and not
torch.jit.is_scripting():`, `if self.with_cp and x.requires_grad:`); a condition on values
only the forward knows counts as holding. Reading source never runs it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import torch

from ema_lint.passes.class_source import class_definition

# Calls whose callee's last name holds one of these start a checkpoint region
# (`checkpoint`, `cp.checkpoint`, `checkpoint_seq`, `self._gradient_checkpointing_func`).
_ENTRY_WORDS = ("checkpoint",)


@dataclass(frozen=True)
class CheckpointCall:
    """One checkpoint call in a forward: the submodules it recomputes, relative to the module
    (`blocks`, `layer1.0`), the callee's name, its `use_reentrant` when a constant, and the
    `file:line` of the call."""

    targets: tuple[str, ...]
    entry: str
    use_reentrant: bool | None
    origin: str


def checkpoint_calls(module: torch.nn.Module) -> list[CheckpointCall]:
    """The checkpoint calls `module`'s class makes (in any of its methods) whose conditions
    hold on `module`, with the submodules each recomputes."""
    calls = []
    for function, path in _methods(type(module)):
        receiver = function.args.args[0].arg if function.args.args else None
        if receiver is None:
            continue
        reader = _Reader(module, receiver, _functions_by_name(type(module)))
        for call, conditions in _checkpoint_call_sites(function):
            if not all(reader.holds(condition) for condition in conditions):
                continue
            targets = reader.targets(call, function)
            existing = tuple(t for t in dict.fromkeys(targets) if _has_submodule(module, t))
            if existing:
                origin = f"{path}:{call.lineno}"
                calls.append(CheckpointCall(existing, _callee_name(call), _use_reentrant(call), origin))
    return calls


def _use_reentrant(call: ast.Call) -> bool | None:
    for keyword in call.keywords:
        if keyword.arg == "use_reentrant" and isinstance(keyword.value, ast.Constant):
            return bool(keyword.value.value)
    return None


def _has_submodule(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _classes_outside_torch(cls: type) -> list[type]:
    return [base for base in cls.__mro__ if base.__module__.split(".")[0] not in ("torch", "builtins")]


def _methods(cls: type) -> list[tuple[ast.FunctionDef, str]]:
    methods = []
    for base in _classes_outside_torch(cls):
        parsed = class_definition(base)
        if parsed is None:
            continue
        definition, path = parsed
        methods.extend(
            (node, path) for node in definition.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        )
    return methods


def _functions_by_name(cls: type) -> dict[str, ast.FunctionDef]:
    found: dict[str, ast.FunctionDef] = {}
    for function, _ in reversed(_methods(cls)):
        found[function.name] = function  # the most derived definition wins
    return found


def _callee_name(call: ast.Call) -> str:
    function = call.func
    if isinstance(function, ast.Attribute):
        return function.attr
    return function.id if isinstance(function, ast.Name) else ""


def _is_entry(call: ast.Call) -> bool:
    name = _callee_name(call).lower()
    return any(word in name for word in _ENTRY_WORDS) and "wrapper" not in name


def _checkpoint_call_sites(function: ast.AST) -> list[tuple[ast.Call, tuple[ast.expr, ...]]]:
    """Every checkpoint call in `function` with the conditions that must hold to reach it
    (an `if` test, or its negation in the `else` branch; the test of a conditional expression)."""
    found: list[tuple[ast.Call, tuple[ast.expr, ...]]] = []

    def visit(node: ast.AST, conditions: tuple[ast.expr, ...]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and node is not function:
            return  # an inner function runs where it is called, read as a checkpoint target
        if isinstance(node, ast.If):
            visit(node.test, conditions)
            for child in node.body:
                visit(child, (*conditions, node.test))
            for child in node.orelse:
                visit(child, (*conditions, ast.UnaryOp(ast.Not(), node.test)))
            return
        if isinstance(node, ast.IfExp):
            visit(node.test, conditions)
            visit(node.body, (*conditions, node.test))
            visit(node.orelse, (*conditions, ast.UnaryOp(ast.Not(), node.test)))
            return
        if isinstance(node, ast.Call) and _is_entry(node):
            found.append((node, conditions))
        for child in ast.iter_child_nodes(node):
            visit(child, conditions)

    visit(function, ())
    return found


class _Reader:
    """Reads expressions of one method against the live module."""

    def __init__(self, module: torch.nn.Module, receiver: str, methods: dict[str, ast.FunctionDef]) -> None:
        self.module = module
        self.receiver = receiver
        self.methods = methods

    # ---- conditions ----------------------------------------------------------------------

    def holds(self, test: ast.expr) -> bool:
        value = self._truth(test)
        return value is not False

    def _truth(self, test: ast.expr) -> bool | None:
        """True, False, or None when the forward's values decide."""
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = self._truth(test.operand)
            return None if inner is None else not inner
        if isinstance(test, ast.BoolOp):
            values = [self._truth(v) for v in test.values]
            if isinstance(test.op, ast.And):
                return False if False in values else (None if None in values else True)
            return True if True in values else (None if None in values else False)
        if isinstance(test, ast.Call) and _callee_name(test) == "is_scripting":
            return False
        path = self._attribute_path(test)
        if path is not None:
            value = self._live(path)
            if value is _MISSING or isinstance(value, (torch.Tensor, torch.nn.Module)):
                return None
            return bool(value)
        return None

    def _live(self, path: str) -> object:
        value: object = self.module
        for part in path.split("."):
            try:
                value = getattr(value, part)
            except Exception:  # a property that fails outside forward: the forward decides
                return _MISSING
        return value

    # ---- targets ---------------------------------------------------------------------------

    def targets(self, call: ast.Call, function: ast.FunctionDef) -> list[str]:
        arguments = list(call.args)
        if _callee_name(call).endswith("_func") or _callee_name(call) == "checkpoint_fn":
            arguments = arguments[:1]  # a stored entry point: the function comes first
        found: list[str] = []
        for argument in arguments[:1]:
            found.extend(self._submodules(argument, function, depth=0))
        return found

    def _submodules(self, expression: ast.expr, function: ast.FunctionDef, depth: int) -> list[str]:
        if depth > 3:
            return []
        if isinstance(expression, (ast.List, ast.Tuple)):
            return [t for element in expression.elts for t in self._submodules(element, function, depth + 1)]
        if isinstance(expression, ast.Call):
            # `partial(self.block, ...)`, `list(self.blocks)`, or a closure factory given the
            # module (`create_custom_forward(layer)`)
            if expression.args:
                return self._submodules(expression.args[0], function, depth + 1)
            return []
        if isinstance(expression, ast.Subscript):
            containers = self._submodules(expression.value, function, depth + 1)
            return [item for container in containers for item in self._items(container, expression.slice)]
        if isinstance(expression, ast.Attribute) and expression.attr in ("__call__", "forward"):
            return self._submodules(expression.value, function, depth + 1)
        if isinstance(expression, ast.Lambda):
            return self._called_submodules(expression.body)
        path = self._attribute_path(expression)
        if path is not None:
            method = self.methods.get(path)
            if method is not None and not _has_submodule(self.module, path):
                return self._called_submodules(method)  # `checkpoint(self._inner_forward, x)`
            return [path]
        if isinstance(expression, ast.Name):
            inner = _local_function(function, expression.id)
            if inner is not None:
                return self._called_submodules(inner)
            iterable = _loop_iterable(function, expression.id)
            if iterable is not None:
                return self._submodules(iterable, function, depth + 1)
        return []

    def _items(self, container: str, index: ast.expr) -> list[str]:
        """The children `container[index]` selects when the index is a constant (`body[2:]`,
        `stem[0]`); the whole container when the forward's values decide."""
        if not _has_submodule(self.module, container):
            return [container]
        names = list(self.module.get_submodule(container)._modules)

        def constant(bound: ast.expr | None) -> int | None:
            if bound is None:
                return None
            if isinstance(bound, ast.UnaryOp) and isinstance(bound.op, ast.USub):
                inner = constant(bound.operand)
                return None if inner is None else -inner
            return bound.value if isinstance(bound, ast.Constant) and isinstance(bound.value, int) else None

        if isinstance(index, ast.Slice) and index.step is None:
            lower, upper = constant(index.lower), constant(index.upper)
            if (index.lower is None or lower is not None) and (index.upper is None or upper is not None):
                return [f"{container}.{name}" for name in names[lower:upper]]
        position = constant(index)
        if position is not None and -len(names) <= position < len(names):
            return [f"{container}.{names[position]}"]
        return [container]

    def _called_submodules(self, body: ast.AST) -> list[str]:
        """The submodules a function body calls: `self.conv1(x)`, `self.layers[i](x)`."""
        found = []
        for node in ast.walk(body):
            if isinstance(node, ast.Call):
                target = node.func.value if isinstance(node.func, ast.Subscript) else node.func
                path = self._attribute_path(target)
                if path is not None and _has_submodule(self.module, path):
                    found.append(path)
        return found

    def _attribute_path(self, expression: ast.expr) -> str | None:
        """`self.a.b` -> "a.b"; None for anything else."""
        parts = []
        while isinstance(expression, ast.Attribute):
            parts.append(expression.attr)
            expression = expression.value
        if isinstance(expression, ast.Name) and expression.id == self.receiver and parts:
            return ".".join(reversed(parts))
        return None


_MISSING = object()


def _local_function(function: ast.FunctionDef, name: str) -> ast.FunctionDef | None:
    for node in ast.walk(function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name and node is not function:
            return node
    return None


def _loop_iterable(function: ast.FunctionDef, name: str) -> ast.expr | None:
    """What a loop variable iterates over: `for blk in self.blocks`, `for i, blk in
    enumerate(self.blocks)`, `for blk, m in zip(self.blocks, ...)` (its own position)."""
    for node in ast.walk(function):
        if not isinstance(node, (ast.For, ast.comprehension)):
            continue
        iterable = _element_source(node.target, node.iter, name)
        if iterable is not None:
            return iterable
    return None


def _element_source(target: ast.expr, iterable: ast.expr, name: str) -> ast.expr | None:
    if isinstance(target, ast.Name):
        return iterable if target.id == name else None
    if not isinstance(target, ast.Tuple) or not isinstance(iterable, ast.Call):
        return None
    callee = _callee_name(iterable)
    if callee == "enumerate" and len(target.elts) == 2 and iterable.args:
        return _element_source(target.elts[1], iterable.args[0], name)
    if callee == "zip" and len(target.elts) == len(iterable.args):
        for element, source in zip(target.elts, iterable.args):
            found = _element_source(element, source, name)
            if found is not None:
                return found
    return None
