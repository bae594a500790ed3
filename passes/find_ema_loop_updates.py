"""EMA301 ema-update-in-python-loop, found in a traced model.

## What it does
Finds model / teacher / momentum-encoder EMA updates made one tensor at a time in forward (or
a method forward calls, such as MoCo's `@torch.no_grad() def _momentum_update(self)`): a run
of at least two consecutive per-tensor updates of parameters or buffers from other parameters
or buffers, with the same form and the same decay. Unrolled by the trace, the loop body is one
of `ema.mul_(d).add_(src, alpha=w)`, `ema.mul_(d).add_(w * src)`, `ema.lerp_(src, w)` or
`ema.copy_(ema * d + src * w)` (also as `ema.data = ...` and `self.ema = ...`), each operand
optionally read through `.data` or `.detach()`.

## Why is this bad?
The loop launches a few kernels per tensor, hundreds per step for a real model, and on an
accelerator the launch overhead dominates; one `torch._foreach_*` call per operation updates
every tensor at once.

## Fix safety
`FuseEmaUpdatesPass` replaces the run with one call that repeats the loop's operations with
`torch._foreach_*` ops in the same order (for bf16 / fp16, each factor as a 0-dim float64
tensor, which rounds as `Tensor.mul_(float)` does): bit-identical results (safe). It fuses only runs outside checkpoint regions, run with
grad mode off (or written through `.data`), over floating tensors of one dtype and device
with matching shapes and no tensor both averaged and read; other runs are reported without a fix.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.fx.node import Node

from ema_lint.diagnostics import Applicability, Diagnostic, Fix
from ema_lint.passes.findings import module_diagnostic
from ema_lint.passes.tracer import GRAD_ENABLED_META, MODULE_META, REGIONS_META, Trace, assign_data, store

FIX = Fix("Fuse the per-tensor updates into `torch._foreach_*` calls with `FuseEmaUpdatesPass`", Applicability.SAFE)

MUL_ADD = "mul_add"  # ema.mul_(d).add_(src, alpha=w)
MUL_ADD_PRODUCT = "mul_add_product"  # ema.mul_(d).add_(w * src)
LERP = "lerp"  # ema.lerp_(src, w)
AFFINE_COPY = "affine_copy"  # ema.copy_(ema * d + src * w)


@dataclass(frozen=True)
class TensorUpdate:
    """One EMA step of one tensor: `nodes` are the step's own nodes in graph order (the last one
    writes `ema`); `ema` and `source` are the `get_attr` nodes behind any `.data` / `detach`."""

    form: str
    ema: Node
    source: Node
    decay: float | None
    weight: float
    nodes: tuple[Node, ...]
    through_data: bool

    @property
    def last(self) -> Node:
        return self.nodes[-1]


@dataclass(frozen=True)
class UpdateGroup:
    updates: tuple[TensorUpdate, ...]

    @property
    def form(self) -> str:
        return self.updates[0].form

    @property
    def decay(self) -> float | None:
        return self.updates[0].decay

    @property
    def weight(self) -> float:
        return self.updates[0].weight

    @property
    def module(self) -> str:
        return self.updates[-1].last.meta.get(MODULE_META, "")

    @property
    def regions(self) -> tuple[int, ...]:
        return self.updates[-1].last.meta.get(REGIONS_META, ())

    @property
    def grad_enabled(self) -> bool:
        return bool(self.updates[-1].last.meta.get(GRAD_ENABLED_META))


def find_ema_loop_updates(trace: Trace) -> list[Diagnostic]:
    diagnostics = []
    for group in update_groups(trace.graph):
        emas = [str(u.ema.target) for u in group.updates]
        sources = [str(u.source.target) for u in group.updates]
        root_name = type(trace.root).__name__
        message = (
            f"{len(emas)} tensors of `{_common_owner(emas) or root_name}` are updated toward "
            f"`{_common_owner(sources) or root_name}` one at a time, one kernel per tensor instead "
            "of one `torch._foreach_*` call"
        )
        fix = FIX if fusable(group, functools.partial(resolve_attribute, trace.root)) else None
        diagnostics.append(module_diagnostic("EMA301", message, trace.root, group.module, fix))
    return diagnostics


def update_groups(graph: torch.fx.Graph) -> list[UpdateGroup]:
    """Runs of >= 2 per-tensor updates with one form, decay, weight, grad mode, region and
    calling module, with nothing but their own nodes and attribute reads (`get_attr`, `.data`,
    `detach()`) from the first node of the run to the last: fusing a run after its last node
    reorders only the updates."""
    owner: dict[Node, TensorUpdate] = {}
    for node in graph.nodes:
        update = _match(node)
        if update is not None:
            owner.update((n, update) for n in update.nodes)
    groups: list[UpdateGroup] = []
    run: list[TensorUpdate] = []
    pending: set[Node] = set()  # last nodes of the run's updates not reached yet
    spoiled: set[Node] = set()  # last nodes of updates with a foreign node inside them

    def close() -> None:
        # A run that stops inside an update keeps only what precedes that update.
        cut = next((i for i, member in enumerate(run) if member.last in pending), len(run))
        spoiled.update(pending)
        del run[cut:]
        if len(run) >= 2:
            groups.append(UpdateGroup(tuple(run)))
        run.clear()
        pending.clear()

    for node in graph.nodes:
        if _attribute(node) is not None:
            # Reads of an attribute, directly or through `.data` / `detach()`, change nothing:
            # moving updates past them is safe. `state_dict()` makes all its detached reads first.
            continue
        update = owner.get(node)
        if update is None or update.last in spoiled:
            close()
        elif any(update is member for member in run):
            pending.discard(node)
        else:
            if run and _key(run[-1]) != _key(update):
                close()
            run.append(update)
            if node is not update.last:
                pending.add(update.last)
    close()
    return groups


def fusable(group: UpdateGroup, resolve: Callable[[str], Any]) -> bool:
    """Whether one fused call reproduces the run bit for bit (see the module docstring)."""
    if group.regions or (group.grad_enabled and not all(u.through_data for u in group.updates)):
        return False
    emas = [resolve(str(u.ema.target)) for u in group.updates]
    sources = [resolve(str(u.source.target)) for u in group.updates]
    tensors = emas + sources
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors):
        return False
    if len({(t.dtype, t.device) for t in tensors}) != 1:
        return False
    if any(e.shape != s.shape for e, s in zip(emas, sources)):
        return False
    ema_ids = {id(t) for t in emas}
    return len(ema_ids) == len(emas) and not ema_ids & {id(t) for t in sources}


def resolve_attribute(root: torch.nn.Module, target: str) -> Any:
    return functools.reduce(getattr, target.split("."), root)


def _key(update: TensorUpdate) -> tuple[Any, ...]:
    meta = update.last.meta
    return (
        update.form,
        update.decay,
        update.weight,
        meta.get(MODULE_META, ""),
        bool(meta.get(GRAD_ENABLED_META)),
        meta.get(REGIONS_META, ()),
    )


def _common_owner(attributes: list[str]) -> str:
    owners = [a.split(".")[:-1] for a in attributes]
    common: list[str] = []
    for parts in zip(*owners):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


# ---- matching one unrolled loop body ---------------------------------------------------------


def _match(node: Node) -> TensorUpdate | None:
    if node.op == "call_method" and node.target == "lerp_":
        return _match_lerp(node)
    if node.op == "call_method" and node.target == "add_":
        return _match_mul_add(node)
    if (node.op == "call_method" and node.target == "copy_") or (
        node.op == "call_function" and node.target in (store, assign_data)
    ):
        return _match_affine_copy(node)
    return None


def _match_lerp(node: Node) -> TensorUpdate | None:
    if len(node.args) == 3 and not node.kwargs:
        destination, source, weight = node.args
    elif len(node.args) == 2 and set(node.kwargs) == {"weight"}:
        (destination, source), weight = node.args, node.kwargs["weight"]
    else:
        return None
    if not _is_number(weight) or not 0.0 <= weight <= 1.0:
        return None
    return _update(LERP, node, destination, source, None, float(weight), [])


def _match_mul_add(node: Node) -> TensorUpdate | None:
    if len(node.args) != 2:
        return None
    scaled, addend = node.args
    if not (isinstance(scaled, Node) and scaled.op == "call_method" and scaled.target == "mul_"):
        return None
    if len(scaled.args) != 2 or scaled.kwargs or not _is_number(scaled.args[1]):
        return None
    destination, decay = scaled.args
    if set(node.kwargs) == {"alpha"} and _is_number(node.kwargs["alpha"]):
        return _update(MUL_ADD, node, destination, addend, float(decay), float(node.kwargs["alpha"]), [scaled])
    product = _scaled_operand(addend) if not node.kwargs else None
    if product is None:
        return None
    source, weight = product
    return _update(MUL_ADD_PRODUCT, node, destination, source, float(decay), weight, [scaled, addend])


def _match_affine_copy(node: Node) -> TensorUpdate | None:
    if len(node.args) != 2 or node.kwargs:
        return None
    destination, total = node.args
    if not (isinstance(total, Node) and _is_binary(total, operator.add, "add") and len(total.users) == 1):
        return None
    terms = [_scaled_operand(term) for term in total.args]
    if None in terms:
        return None
    base = _attribute(destination)
    for (kept, decay), (source, weight) in (terms, terms[::-1]):  # type: ignore[misc]
        read = _attribute(kept)
        if base is not None and read is not None and read[0].target == base[0].target:
            extra = [total, *(term for term in total.args), *read[1]]
            return _update(AFFINE_COPY, node, destination, source, decay, weight, extra, bool(read[1]))
    return None


def _scaled_operand(node: Any) -> tuple[Node, float] | None:
    """`x * c` or `c * x` with a number `c`: (x, c)."""
    if not (isinstance(node, Node) and _is_binary(node, operator.mul, "mul") and len(node.users) == 1):
        return None
    left, right = node.args
    if isinstance(left, Node) and _is_number(right):
        return left, float(right)
    if isinstance(right, Node) and _is_number(left):
        return right, float(left)
    return None


def _update(
    form: str,
    last: Node,
    destination: Any,
    source: Any,
    decay: float | None,
    weight: float,
    extra: list[Node],
    other_reads_untracked: bool = True,
) -> TensorUpdate | None:
    """`extra`: the step's nodes besides the final write and the `.data` / `detach` wrappers of
    `destination` and `source`; `other_reads_untracked`: whether further reads of the EMA tensor
    (`ema * d` in the copy form) go through such a wrapper."""
    if decay is not None and not math.isclose(decay + weight, 1.0, rel_tol=1e-9, abs_tol=1e-12):
        return None  # not an average of the two
    ema, source_attribute = _attribute(destination), _attribute(source)
    if ema is None or source_attribute is None or last.users:
        return None
    wrappers = ema[1] + source_attribute[1]
    nodes = {n for n in (*extra, *wrappers, last)}
    # Every node of the step must serve only the step, or erasing it would change other code.
    if any(n is not last and not set(n.users) <= nodes for n in nodes):
        return None
    order = {n: i for i, n in enumerate(last.graph.nodes)}
    return TensorUpdate(
        form,
        ema[0],
        source_attribute[0],
        decay,
        weight,
        tuple(sorted(nodes, key=order.__getitem__)),
        through_data=(bool(ema[1]) or last.target is assign_data)
        and bool(source_attribute[1])
        and other_reads_untracked,
    )


def _attribute(value: Any) -> tuple[Node, list[Node]] | None:
    """The `get_attr` node behind `value`, and the `.data` / `detach()` nodes on the way."""
    wrappers: list[Node] = []
    while isinstance(value, Node):
        if value.op == "get_attr":
            return value, wrappers
        if value.op == "call_function" and value.target is getattr and value.args[1:] == ("data",):
            wrappers.append(value)
            value = value.args[0]
        elif value.op == "call_method" and value.target == "detach" and len(value.args) == 1:
            wrappers.append(value)
            value = value.args[0]
        else:
            return None
    return None


def _is_binary(node: Node, function: Callable[..., Any], method: str) -> bool:
    if node.kwargs or len(node.args) != 2:
        return False
    return (node.op == "call_function" and node.target in (function, getattr(torch, method))) or (
        node.op == "call_method" and node.target == method
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
