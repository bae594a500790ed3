"""Running statistics that are updated exactly once per step under activation checkpointing.

A checkpointed region runs its forward twice: once for real and once, inside backward, to
recompute activations. A BatchNorm in the region therefore updates `running_mean`,
`running_var` and `num_batches_tracked` twice per step. Here the recomputation runs on
throw-away clones of those buffers: BatchNorm saves the running tensors for backward, so
they must still be passed in (passing None breaks non-reentrant checkpoint's saved-tensor
count check); in training mode the output only depends on the batch statistics, so the
recomputed output and gradients are unchanged, and the real buffers are left as the
original forward left them.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

import torch
from torch import nn

from ema_lint.runtime.recompute import (
    _GlobalModuleHooks,
    explicitly_recomputing,
    is_recomputing,
    recomputing,
)

RUNNING_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

_shielded = threading.local()


def is_running_stat_module(module: nn.Module) -> bool:
    """BatchNorm/InstanceNorm with `track_running_stats`, any `_NormBase` subclass (timm
    `BatchNormAct2d`, lazy BN, SyncBatchNorm) and any module that keeps a `running_mean`
    or `running_var` buffer."""
    buffers = module._buffers
    return buffers.get("running_mean") is not None or buffers.get("running_var") is not None


def _stack(module: nn.Module) -> list:
    stacks = getattr(_shielded, "stacks", None)
    if stacks is None:
        stacks = _shielded.stacks = {}
    return stacks.setdefault(id(module), [])


def _shield(module: nn.Module) -> None:
    originals = {}
    for name in RUNNING_STAT_BUFFERS:
        buffer = module._buffers.get(name)
        if buffer is not None:
            originals[name] = buffer
            module._buffers[name] = buffer.clone()
    _stack(module).append(originals)


def _unshield(module: nn.Module) -> None:
    stacks = getattr(_shielded, "stacks", None)
    stack = stacks.get(id(module)) if stacks else None
    if not stack:
        return
    module._buffers.update(stack.pop())
    if not stack:
        del stacks[id(module)]


# Module-level functions (not closures) so converted models still pickle and deepcopy.
def _converted_pre_hook(module: nn.Module, args: Any) -> None:
    if is_recomputing():
        _shield(module)


def _converted_post_hook(module: nn.Module, args: Any, output: Any) -> None:
    _unshield(module)


def is_converted(module: nn.Module) -> bool:
    return any(hook is _converted_pre_hook for hook in module._forward_pre_hooks.values())


def convert_running_stats(model: nn.Module) -> nn.Module:
    """Make every running-stat module in `model` update its statistics once per step under any
    checkpoint flavour, in place; returns `model`.

    Hooks are added (no class is swapped), so `state_dict` keys, custom `forward`s such as timm
    `BatchNormAct2d`, pickling and `copy.deepcopy` keep working. Converting twice is a no-op.
    """
    for module in model.modules():
        if is_running_stat_module(module) and not is_converted(module):
            module.register_forward_pre_hook(_converted_pre_hook)
            # always_call: non-reentrant early stop aborts a recomputation by raising inside a
            # forward, and the real buffers must be put back even then.
            module.register_forward_hook(_converted_post_hook, always_call=True)
    return model


def _explicit_pre_hook(module: nn.Module, args: Any) -> None:
    if explicitly_recomputing() and is_running_stat_module(module) and not is_converted(module):
        _shield(module)


def _explicit_post_hook(module: nn.Module, args: Any, output: Any) -> None:
    # A converted module's own always-call hook runs after this global one and unshields it.
    if not is_converted(module):
        _unshield(module)


_explicit_hooks = _GlobalModuleHooks(_explicit_pre_hook, _explicit_post_hook)


class _RecomputingRunningStats:
    """A recomputation in which every running-stat module, converted or not, is shielded.

    Reusable: non-reentrant checkpoint enters its recompute context once per backward, which is
    more than once under `retain_graph=True`.
    """

    def __init__(self) -> None:
        self._exits: list[contextlib.ExitStack] = []

    def __enter__(self) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(recomputing())
            stack.enter_context(_explicit_hooks.installed())
            self._exits.append(stack.pop_all())

    def __exit__(self, *exc_info: object) -> None:
        self._exits.pop().close()


def running_stats_context_fn() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """`context_fn` for `checkpoint(fn, *args, use_reentrant=False, context_fn=running_stats_context_fn)`.

    The recomputation leaves the running statistics of every module in the region untouched,
    whether or not the model was converted.
    """
    return contextlib.nullcontext(), _RecomputingRunningStats()


class recompute_aware:
    """Wrap the callable of a reentrant `checkpoint(recompute_aware(fn), *args)` call site.

    Reentrant checkpoint calls `fn` first under `no_grad` (the forward) and then once per
    backward with grad enabled (the recomputation); calls after the first made with grad
    enabled leave the running statistics untouched. Create the wrapper in the call expression
    so each step starts with a fresh first call.
    """

    def __init__(self, fn: Callable) -> None:
        self.__wrapped__ = fn
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        recompute = self.calls > 0 and torch.is_grad_enabled()
        self.calls += 1
        if not recompute:
            return self.__wrapped__(*args, **kwargs)
        with _RecomputingRunningStats():
            return self.__wrapped__(*args, **kwargs)
