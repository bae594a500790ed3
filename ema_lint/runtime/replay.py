"""Replay: recompute a checkpointed region from the buffer state its forward started with.

Modules that mutate buffers in forward and read them back (spectral_norm's power iteration
updates `weight_u`/`weight_v` and normalises the weight with them) are stepped a second time
by checkpoint's recomputation, and since the recomputed weight differs from the one the
forward used, even the gradients change. `replay_buffers` snapshots the buffers of every
module the region's forward calls (before that module's own pre-hooks run), recomputes from
the snapshot and then puts back the state the forward left, so the region behaves as if it
had not been checkpointed. It covers running statistics too, at the cost of one clone of
the region's buffers per step.

`replay_buffers` is a `context_fn`, so it needs the call site. `replay_on_recompute(module)`
does the same for one module wherever it is checkpointed, recognising a recomputation the way
`convert_running_stats` does.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer

from ema_lint.runtime.recompute import _GlobalModuleHooks, is_recomputing

_recording = threading.local()


def _uninitialized(module: nn.Module) -> bool:
    """A lazy module before its first forward: its buffers have no shape yet."""
    return any(isinstance(b, UninitializedBuffer) for b in module._buffers.values())


def _initialize_lazy(module: nn.Module, args: Any) -> None:
    """Materialise a lazy module's parameters and buffers from this forward's input now, as
    its own pre-hook is about to (that hook then finds nothing left to initialise and only
    retires itself), so the state the forward starts from can be snapshotted."""
    module.initialize_parameters(*args)


class _ReplayRegion:
    def __init__(self) -> None:
        self.snapshots: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []
        self._seen: set[int] = set()

    def record(self, module: nn.Module, args: Any) -> None:
        if id(module) in self._seen:
            return  # the state before the region's first call is the one to replay from
        self._seen.add(id(module))
        if _uninitialized(module):
            _initialize_lazy(module, args)
        buffers = {name: buffer.clone() for name, buffer in module._buffers.items() if buffer is not None}
        if buffers:
            self.snapshots.append((module, buffers))


def _active_regions() -> list[_ReplayRegion]:
    regions = getattr(_recording, "regions", None)
    if regions is None:
        regions = _recording.regions = []
    return regions


def _record_pre_hook(module: nn.Module, args: Any) -> None:
    # Every region being recorded on this thread: an outer region's recomputation re-runs
    # the inner regions' forwards too, so it needs their modules' starting state as well.
    for region in _active_regions():
        region.record(module, args)


_record_hooks = _GlobalModuleHooks(_record_pre_hook, None)


class _RecordForward:
    def __init__(self, region: _ReplayRegion) -> None:
        self._region = region
        self._hooks = _record_hooks.installed()

    def __enter__(self) -> None:
        _active_regions().append(self._region)
        self._hooks.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._hooks.__exit__(*exc_info)
        _active_regions().remove(self._region)


class _ReplayRecompute:
    """Reusable: entered once per backward, more than once under `retain_graph=True`."""

    def __init__(self, region: _ReplayRegion) -> None:
        self._region = region
        self._current: list[list[tuple[nn.Module, dict[str, torch.Tensor]]]] = []

    def __enter__(self) -> None:
        current = []
        for module, snapshot in self._region.snapshots:
            current.append((module, {name: module._buffers[name] for name in snapshot}))
            # Fresh clones, so the snapshot stays intact for a further recomputation. Buffer
            # objects are swapped rather than written, so tensors that autograd saved from
            # the real buffers keep their version counters.
            module._buffers.update({name: value.clone() for name, value in snapshot.items()})
        self._current.append(current)

    def __exit__(self, *exc_info: object) -> None:
        for module, buffers in self._current.pop():
            module._buffers.update(buffers)


def replay_buffers() -> tuple[_RecordForward, _ReplayRecompute]:
    """`context_fn` for regions holding stateful modules other than running statistics:

    ```python
    checkpoint(block, x, use_reentrant=False, context_fn=replay_buffers)
    ```
    """
    region = _ReplayRegion()
    return _RecordForward(region), _ReplayRecompute(region)


class _ReplayOnRecompute:
    """The hooks behind `replay_on_recompute`; picklable. On the module it was given, one
    snapshot of the buffers of the whole subtree before its latest forward outside backward
    (exact however often a submodule runs inside one call of the module); on each buffer
    owner below it, the same for that owner alone, acting only when the owner runs outside a
    call of that module (a checkpoint calling the children directly).

    One snapshot keeps the memory bounded whatever the training loop does (forwards that are
    never recomputed, inference in train mode); a step that calls the module more than once
    recomputes every call from the last call's snapshot, which is why the docs limit
    exactness to one call.
    """

    def __init__(self, root: "_ReplayOnRecompute | None" = None) -> None:
        self.root = root
        self._reset()

    def _reset(self) -> None:
        self._snapshot: list[tuple[nn.Module, str, torch.Tensor]] = []
        self._left_by_forward: list[list[tuple[nn.Module, str, torch.Tensor]]] = []
        # calls of the root module in flight, during which the owners below leave it alone
        self.depth = 0

    def __getstate__(self) -> dict[str, Any]:
        # the snapshot belongs to the step in flight, not to the module's state
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root = state.get("root")
        self._reset()

    def before_forward(self, module: nn.Module, args: Any) -> None:
        if self.root is None:
            self.depth += 1
        elif self.root.depth:
            # inside a call of the root module, whose snapshot covers this owner; a lazy
            # owner joins it here, once its own input has materialised it
            if _uninitialized(module) and not is_recomputing():
                _initialize_lazy(module, args)
                self.root._snapshot.extend(_clones([module]))
            return
        if not is_recomputing():
            # Reentrant checkpoint runs the real forward under no_grad, hence `training` too.
            if torch.is_grad_enabled() or module.training:
                if self.root is not None and _uninitialized(module):
                    _initialize_lazy(module, args)
                self._snapshot = _clones(module.modules() if self.root is None else [module])
            return
        self._left_by_forward.append([(owner, name, owner._buffers[name]) for owner, name, _ in self._snapshot])
        # Clones, so the snapshot stays intact for a further backward (`retain_graph=True`);
        # buffer objects are swapped rather than written, so tensors that autograd saved
        # from the real buffers keep their version counters.
        for owner, name, value in self._snapshot:
            owner._buffers[name] = value.clone()

    def after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.root is None:
            self.depth -= 1
        elif self.root.depth:
            return
        if is_recomputing() and self._left_by_forward:
            for owner, name, value in self._left_by_forward.pop():
                owner._buffers[name] = value


def _clones(owners: Iterable[nn.Module]) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Copies of the owners' materialised buffers (a lazy module's come once it has run)."""
    return [
        (owner, name, buffer.clone())
        for owner in owners
        for name, buffer in owner._buffers.items()
        if buffer is not None and not isinstance(buffer, UninitializedBuffer)
    ]


def replay_on_recompute(module: nn.Module) -> nn.Module:
    """In place, make checkpoint recomputation of `module` run from the buffer state its real
    forward started with and leave the state that forward left (EMA103), whatever the call site.

    ```python
    replay_on_recompute(discriminator.block[0])   # a spectral_norm conv inside a checkpoint
    replay_on_recompute(model)                    # a container whose children a checkpoint calls
    ```

    Recomputation is recognised like `convert_running_stats` does (a forward inside backward,
    or an explicit `recomputing()` signal), so any checkpoint flavour and call site works.
    A call of `module` replays its whole subtree from one snapshot (exact however often a
    submodule runs inside it); a buffer-owning submodule that runs outside a call of `module`
    (`checkpoint_sequential` over a container, nested checkpoints) replays its own buffers.
    Lazy modules are snapshotted once initialised. Exact when `module`, or each such
    submodule, runs once per training step, as a checkpointed block does; the buffers are
    cloned once per forward in training mode. For a module called several times in one step,
    use `replay_buffers` at the call site.
    """
    root = _ReplayOnRecompute()
    for owner in module.modules():
        if owner is not module and not owner._buffers:
            continue
        hooks = root if owner is module else _ReplayOnRecompute(root)
        # Before the module's own pre-hooks: old-style spectral_norm steps its power iteration in one.
        owner.register_forward_pre_hook(hooks.before_forward, prepend=True)
        owner.register_forward_hook(hooks.after_forward, always_call=True)
    return module
