"""The user's model inside the wrappers training code puts around it.

`torch.compile` (`OptimizedModule`), `nn.DataParallel` and `DistributedDataParallel` hold the
model that defines the forward; the analyses and remedies work on that module, and
`transform` returns a wrapper of the same kind, with the same settings, around the fixed
copy. The caller's wrapper, its module and its compiled code are never run or changed:
only eager copies of the inner module are traced or stepped.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch._dynamo.eval_frame import OptimizedModule


@dataclass
class Unwrapped:
    """`module` is what the wrappers hold; `rewrap` puts the same wrappers, innermost first,
    around another module; `kinds` names them, outermost first."""

    module: torch.nn.Module
    rewrap: Callable[[torch.nn.Module], torch.nn.Module]
    kinds: tuple[str, ...]


def unwrap(model: torch.nn.Module) -> Unwrapped:
    """Peel every wrapper this module knows off `model`, outermost first."""
    rewraps: list[Callable[[torch.nn.Module], torch.nn.Module]] = []
    kinds: list[str] = []
    while True:
        layer = _layer(model)
        if layer is None:
            break
        inner, rewrap, kind = layer
        rewraps.append(rewrap)
        kinds.append(kind)
        model = inner

    def rewrap_all(module: torch.nn.Module) -> torch.nn.Module:
        for rewrap in reversed(rewraps):
            module = rewrap(module)
        return module

    return Unwrapped(model, rewrap_all, tuple(kinds))


def _layer(
    model: torch.nn.Module,
) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.nn.Module], str] | None:
    if isinstance(model, OptimizedModule):
        context = model.dynamo_ctx
        # The caller's compile settings (backend, mode, options), for a new module.
        return model._orig_mod, lambda inner: OptimizedModule(inner, context), "torch.compile"
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module, lambda inner: _same_distributed(model, inner), "DistributedDataParallel"
    if isinstance(model, torch.nn.DataParallel):
        # Without an accelerator DataParallel keeps only the module and no settings.
        settings = {
            "device_ids": model.device_ids or None,
            "output_device": getattr(model, "output_device", None),
            "dim": getattr(model, "dim", 0),
        }
        return model.module, lambda inner: torch.nn.DataParallel(inner, **settings), "DataParallel"
    return None


def _same_distributed(
    wrapper: torch.nn.parallel.DistributedDataParallel, inner: torch.nn.Module
) -> torch.nn.parallel.DistributedDataParallel:
    """A DDP wrapper with `wrapper`'s settings; like any DDP construction, every rank must
    make it (it broadcasts the module's state from rank 0). The settings DDP keeps under
    their own names are carried over; a communication hook cannot be, so that is refused."""
    if getattr(wrapper, "_comm_hooks", None):
        raise TypeError(
            "a DistributedDataParallel wrapper with a communication hook cannot be rebuilt around "
            "a fixed copy: pass inplace=True to fix the module under the caller's wrapper"
        )
    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    settings = {name: getattr(wrapper, name) for name in parameters if name != "module" and hasattr(wrapper, name)}
    settings["bucket_cap_mb"] = wrapper.bucket_bytes_cap / (1024 * 1024)
    return torch.nn.parallel.DistributedDataParallel(inner, **settings)
