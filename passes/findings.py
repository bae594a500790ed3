"""Shared by the analyses: graph-finding codes, where a module is defined, which nodes
write module state.

A finding in a model is located at the class definition of the module it names (the
model has no call-site source to point at); `Diagnostic.module` carries the qualified name.
"""

from __future__ import annotations

import functools
import inspect
from typing import Iterator

import torch
from torch.fx.node import Node

from ema_lint.diagnostics import Diagnostic, Fix, Location, Severity
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
    code: str, message: str, module: torch.nn.Module, module_name: str, fix: Fix | None = None
) -> Diagnostic:
    name, severity = GRAPH_CODES[code]
    path, line = class_location(type(module))
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
    )


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
