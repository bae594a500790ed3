"""Shared by the analyses: graph-finding codes, where a module is defined, which nodes
write module state.

A finding in a model is located where code outside torch builds the module it names (the
model has no call-site source to point at); `Diagnostic.module` carries the qualified name.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
from typing import Iterator

import torch
from torch.fx.node import Node

from ema_lint.diagnostics import Diagnostic, Fix, Location, Severity
from ema_lint.passes.class_source import class_definition
from ema_lint.passes.tracer import RECOMPUTED_META, writes_in_place

# A hazard keeps one code wherever it is found; these are the names the source rules use.
GRAPH_CODES: dict[str, tuple[str, Severity]] = {
    "EMA003": ("model-not-traceable", Severity.INFO),
    "EMA101": ("batchnorm-in-checkpoint", Severity.ERROR),
    "EMA103": ("stateful-module-in-checkpoint", Severity.ERROR),
    "EMA201": ("ema-update-keeps-graph", Severity.ERROR),
    "EMA301": ("ema-update-in-python-loop", Severity.INFO),
}


@functools.lru_cache(maxsize=None)
def class_location(cls: type) -> tuple[str, int]:
    """The file and 1-based line of `cls`'s definition, or ("<model>", 1) when unknown."""
    try:
        path = inspect.getsourcefile(cls)
        _, line = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return "<model>", 1
    return (path or "<model>"), max(line, 1)


def module_diagnostic(
    code: str,
    message: str,
    root: torch.nn.Module,
    module_name: str,
    fix: Fix | None = None,
    notes: tuple[str, ...] = (),
) -> Diagnostic:
    """A finding on `root.get_submodule(module_name)`, located where the user's code builds it."""
    name, severity = GRAPH_CODES[code]
    path, line, built_notes = built_at(root, module_name)
    return Diagnostic(
        code=code,
        name=name,
        message=message,
        path=path,
        start=Location(line, 1),
        end=Location(line, 1),
        severity=severity,
        fix=fix,
        module=module_name,
        notes=(*notes, *built_notes),
    )


def built_at(root: torch.nn.Module, name: str) -> tuple[str, int, tuple[str, ...]]:
    """The file and line where code outside torch builds the module `name`: its own class
    when that is not torch's, else the assignment of the attribute that holds it (or of its
    container, for `layers.0`) in the nearest owner whose class is not torch's; a torch class
    is named in a note."""
    module = root.get_submodule(name)
    path, line = class_location(type(module))
    if not _is_torch(path):
        return path, line, ()
    note = (f"`{type(module).__name__}` is defined at {path}:{line}",)
    parts = name.split(".") if name else []
    for depth in range(len(parts) - 1, -1, -1):
        owner = type(root.get_submodule(".".join(parts[:depth])))
        owner_path, owner_line = class_location(owner)
        if not _is_torch(owner_path):
            return owner_path, _assignment_line(owner, parts[depth]) or owner_line, note
    return path, line, ()


def _is_torch(path: str) -> bool:
    return path.startswith(_TORCH_DIRECTORY)


_TORCH_DIRECTORY = os.path.dirname(torch.__file__) + os.sep


@functools.lru_cache(maxsize=None)
def _assignment_line(cls: type, attribute: str) -> int | None:
    """The line of `self.<attribute> = ...` (or `add_module` / `setattr` with that name) in
    the source of `cls` or a class it inherits from outside torch."""
    for base in cls.__mro__:
        if _is_torch(class_location(base)[0]):
            break
        parsed = class_definition(base)
        if parsed is None:
            continue
        for function in ast.walk(parsed[0]):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or not function.args.args:
                continue
            receiver = function.args.args[0].arg  # `self`, whatever it is called
            for node in ast.walk(function):
                if _assigns(node, receiver, attribute):
                    return node.lineno
    return None


def _assigns(node: ast.AST, receiver: str, attribute: str) -> bool:
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(
            isinstance(t, ast.Attribute)
            and t.attr == attribute
            and isinstance(t.value, ast.Name)
            and t.value.id == receiver
            for t in targets
        )
    if isinstance(node, ast.Call) and len(node.args) >= 2:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        key = node.args[1] if name == "setattr" else node.args[0]
        return (
            name in ("add_module", "register_module", "setattr")
            and isinstance(key, ast.Constant)
            and key.value == attribute
        )
    return False


def in_recomputed_region(node: Node) -> bool:
    """Inside a checkpoint region entered with grad on: code that backward runs again."""
    return bool(node.meta.get(RECOMPUTED_META))


def written_attribute(node: Node) -> str | None:
    """The qualified attribute (`ema.avg`) that `node` writes in place, if any.

    Follows chains such as `self.avg.mul_(d).add_(x)`: the `add_` writes what `mul_` returned,
    which is `avg` itself.
    """
    if node.op == "call_function" and node.target is setattr:
        owner, name = node.args[0], node.args[1]
        if isinstance(owner, Node) and owner.op == "get_attr":
            return f"{owner.target}.{name}" if owner.target else str(name)
        return None
    if not writes_in_place(node):
        return None
    return _attribute_behind(node.args[0])


def written_operands(node: Node) -> list[Node]:
    """The nodes whose values flow into what `node` writes."""
    if node.op == "call_function" and node.target is setattr:
        value = node.args[2]
        return [value] if isinstance(value, Node) else []
    destination = node.args[0]
    return [n for n in node.all_input_nodes if n is not destination]


def _attribute_behind(value: object) -> str | None:
    if not isinstance(value, Node):
        return None
    if value.op == "get_attr":
        return str(value.target)
    if writes_in_place(value):
        return _attribute_behind(value.args[0])
    return None


def state_writes(graph: torch.fx.Graph) -> Iterator[tuple[Node, str]]:
    for node in graph.nodes:
        attribute = written_attribute(node)
        if attribute is not None:
            yield node, attribute


def owner_of(attribute: str) -> tuple[str, str]:
    owner, _, name = attribute.rpartition(".")
    return owner, name
