"""Copies of a caller's model that the model API can trace, step and change freely.

`copy.deepcopy` alone refuses two kinds of model users do pass in (one whose attribute
already carries autograd history, the very EMA201 hazard; one with uninitialised lazy
modules), and it leaves a hook that closes over the model pointing at the caller's model, so
stepping the copy would train the original. `isolated_copy` handles all three, and
`caller_untouched` is the net under what no copy can redirect (a forward that reaches the
caller's model through a module global): it puts the caller's tensors back and says so.
"""

from __future__ import annotations

import copy
import types
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, UninitializedTensorMixin
from torch.utils._pytree import tree_leaves


class CallerModelChanged(RuntimeError):
    """Code run on a copy changed the caller's model; its tensors have been put back."""


def isolated_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` whose tensors, hooks and patched methods refer only to the copy.

    A tensor with autograd history is copied detached (a graph cannot be copied); an
    uninitialised lazy parameter or buffer is copied uninitialised.
    """
    memo: dict[int, Any] = {}
    for tensor in _tensors(model):
        if isinstance(tensor, UninitializedTensorMixin):
            kind = UninitializedParameter if isinstance(tensor, torch.nn.Parameter) else UninitializedBuffer
            memo[id(tensor)] = kind(requires_grad=tensor.requires_grad, device=tensor.device, dtype=tensor.dtype)
        elif tensor.grad_fn is not None:
            memo[id(tensor)] = tensor.detach().clone()
    duplicate = copy.deepcopy(model, memo)
    for module in duplicate.modules():
        for name, value in vars(module).items():
            if _is_hook_table(name, value):
                for key, hook in list(value.items()):
                    value[key] = _rebound(hook, memo)
            elif isinstance(value, types.FunctionType):
                setattr(module, name, _rebound(value, memo))
    return duplicate


@contextmanager
def caller_untouched(model: torch.nn.Module) -> Iterator[None]:
    """Run the body; if it changed a tensor of `model` (its values, even through `.data`,
    which tensor an attribute holds, or a parameter's `.grad`), put them back and raise
    `CallerModelChanged`.

    This holds a copy of the caller's tensors in host memory while the body runs (a meta
    tensor has no values to copy: only which tensor it is can be checked)."""
    slots = [slot for slot in _tensor_slots(model) if not isinstance(slot[2], UninitializedTensorMixin)]
    saved = [_Snapshot.of(tensor) for _, _, tensor in slots]
    parameters = [p for p in {id(p): p for p in model.parameters()}.values() if not isinstance(p, UninitializedTensorMixin)]
    gradients = [(p.grad, _Snapshot.of(p.grad) if p.grad is not None else None) for p in parameters]
    try:
        yield
    finally:
        changed = []
        with torch.no_grad():
            for (table, key, tensor), snapshot in zip(slots, saved):
                if table is not None and table.get(key) is not tensor:
                    table[key] = tensor
                    changed.append(key)
                if snapshot.restore(tensor):
                    changed.append(key)
            for parameter, (gradient, snapshot) in zip(parameters, gradients):
                if parameter.grad is not gradient:
                    parameter.grad = gradient
                    changed.append("a parameter's .grad")
                if gradient is not None and snapshot.restore(gradient):
                    changed.append("a parameter's .grad")
    if changed:
        raise CallerModelChanged(
            f"running the model changed the caller's own model ({', '.join(map(str, changed[:5]))}), "
            "through code the copy cannot redirect (a module global or a hook that reaches it); "
            "the caller's tensors were put back. Pass a model whose forward and hooks use only `self`."
        )


@dataclass
class _Snapshot:
    """A tensor's values in host memory, with what it must still be to take them back."""

    values: torch.Tensor | None
    shape: torch.Size
    dtype: torch.dtype
    version: int

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "_Snapshot":
        values = None if tensor.is_meta else tensor.detach().to("cpu", copy=True)
        return cls(values, tensor.shape, tensor.dtype, tensor._version)

    def restore(self, tensor: torch.Tensor) -> bool:
        """Put the values back into `tensor` if they changed; whether they had."""
        if self.values is None:
            return False
        if tensor.shape != self.shape or tensor.dtype != self.dtype:
            tensor.data = self.values.to(tensor.device)
            return True
        try:
            now = tensor.detach().to("cpu")
            if now.layout != torch.strided:
                now, before = now.to_dense(), self.values.to_dense()
            else:
                before = self.values
            same = (
                torch.allclose(now, before, rtol=0, atol=0, equal_nan=True)
                if now.is_floating_point() or now.is_complex()
                else torch.equal(now, before)
            )
        except (RuntimeError, NotImplementedError):  # a layout or dtype with no comparison
            same = tensor._version == self.version
        if not same:
            tensor.copy_(self.values.to(tensor.device))
        return not same


def _tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    for _, _, tensor in _tensor_slots(model):
        yield tensor


def _tensor_slots(model: torch.nn.Module) -> Iterator[tuple[dict[str, Any] | None, str, torch.Tensor]]:
    """(table, key, tensor) for each parameter, buffer and tensor attribute of every module;
    a tensor held in a list or dict comes with no table (only its contents can be put back)."""
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for key, tensor in table.items():
                if tensor is not None:
                    yield table, key, tensor
        attributes = vars(module)
        for key, value in attributes.items():
            if isinstance(value, torch.Tensor):
                yield attributes, key, value
            elif isinstance(value, (list, tuple)) or (isinstance(value, dict) and key not in _MODULE_TABLES):
                yield from ((None, key, leaf) for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor))


# Tables `nn.Module` keeps for itself, walked above or holding no tensors of their own.
_MODULE_TABLES = frozenset({"_parameters", "_buffers", "_modules"})


def _is_hook_table(name: str, value: Any) -> bool:
    return name.startswith("_") and "hooks" in name and isinstance(value, dict)


def _rebound(hook: Any, memo: dict[int, Any]) -> Any:
    """`hook` with every closure cell that holds part of the copied model holding the copy."""
    if isinstance(hook, types.MethodType) or not isinstance(hook, types.FunctionType) or not hook.__closure__:
        return hook
    cells = hook.__closure__
    if not any(id(_contents(cell)) in memo for cell in cells):
        return hook
    closure = tuple(
        types.CellType(memo[id(_contents(cell))]) if id(_contents(cell)) in memo else cell for cell in cells
    )
    rebound = types.FunctionType(hook.__code__, hook.__globals__, hook.__name__, hook.__defaults__, closure)
    rebound.__kwdefaults__ = hook.__kwdefaults__
    rebound.__dict__.update(hook.__dict__)
    return rebound


def _contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell: a name the closure never bound
        return None
