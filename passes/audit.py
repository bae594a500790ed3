"""Ground truth by running real training steps.

- D1: a buffer or tensor attribute holds a `grad_fn` after a step (EMA201);
- D2: a running-stat module's `num_batches_tracked` moved by a different count than the
  train-mode forwards it ran outside backward (EMA101);
- D3: a buffer was written during backward, i.e. by a recomputed forward (EMA101 for
  running-stat modules, EMA103 for the others). Writes are seen by a `TorchDispatchMode`
  through each op's schema, except the batch-norm family, whose schemas do not mark the
  running statistics they update.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ema_lint.diagnostics import Diagnostic
from ema_lint.passes.findings import module_diagnostic
from ema_lint.passes.tracer import is_running_stat_module

_aten = torch.ops.aten
# op -> (index of `training`, indices of the running statistics it updates when training)
_BATCH_NORM_WRITES: dict[Any, tuple[int, tuple[int, ...]]] = {
    _aten.native_batch_norm.default: (5, (3, 4)),
    _aten.cudnn_batch_norm.default: (5, (3, 4)),
    _aten.miopen_batch_norm.default: (5, (3, 4)),
}


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


class _BackwardWrites(TorchDispatchMode):
    """Records which buffers' storages are written while autograd runs backward."""

    def __init__(self, owners: dict[int, str]) -> None:
        super().__init__()
        self.owners = owners
        self.writers: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if _in_backward():
            for tensor in _written_tensors(func, args, kwargs):
                if tensor.numel() and tensor.device.type != "meta":
                    owner = self.owners.get(_storage_key(tensor))
                    if owner is not None:
                        self.writers.add(owner)
        return func(*args, **kwargs)


def _written_tensors(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    written = []
    batch_norm = _BATCH_NORM_WRITES.get(func)
    if batch_norm is not None:
        training_index, statistic_indices = batch_norm
        if len(args) > training_index and args[training_index]:
            written.extend(args[i] for i in statistic_indices if isinstance(args[i], torch.Tensor))
    for position, argument in enumerate(func._schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = kwargs.get(argument.name, args[position] if position < len(args) else None)
        values = value if isinstance(value, (list, tuple)) else [value]
        written.extend(v for v in values if isinstance(v, torch.Tensor))
    return written


@dataclass
class AuditResult:
    """`diagnostics` as `audit` returns them, and what a fix needs: per module name, the
    attributes that held history (EMA201), and the non-running-stat modules that wrote
    buffers during backward (EMA103)."""

    diagnostics: list[Diagnostic]
    attributes_with_history: dict[str, list[str]]
    buffer_writers_in_backward: list[str]


def audit(model: torch.nn.Module, step_fn: Callable[[torch.nn.Module], Any], steps: int = 2) -> list[Diagnostic]:
    """Run `step_fn(model)` `steps` times (it must do forward and backward) and report the
    hazards the steps showed. Runs real steps: `model` is trained by them."""
    return run_audit(model, step_fn, steps).diagnostics


def run_audit(model: torch.nn.Module, step_fn: Callable[[torch.nn.Module], Any], steps: int = 2) -> AuditResult:
    """`audit` with the findings also in the form a fix needs."""
    modules = dict(model.named_modules())
    running_stat = {name: m for name, m in modules.items() if is_running_stat_module(m)}
    forwards: Counter[str] = Counter()
    handles = [
        module.register_forward_pre_hook(_forward_counter(forwards, name))
        for name, module in running_stat.items()
    ]
    counted: Counter[str] = Counter()
    backward_writers: set[str] = set()
    history: dict[str, set[str]] = defaultdict(set)
    completed = 0
    try:
        for _ in range(steps):
            before = {name: _batches_tracked(m) for name, m in running_stat.items()}
            forwards_before = forwards.copy()
            owners = {
                _storage_key(buffer): name.rpartition(".")[0]
                for name, buffer in model.named_buffers()
                if buffer.numel()
            }
            recorder = _BackwardWrites(owners)
            try:
                with recorder:
                    step_fn(model)
            except RuntimeError:
                # The usual end of a step after an EMA kept the previous step's graph
                # ("backward through the graph a second time"): that history is the finding.
                if not any(history.values()):
                    raise
                forwards.clear()
                forwards.update(forwards_before)
                break
            completed += 1
            backward_writers |= recorder.writers
            for name, module in running_stat.items():
                after = _batches_tracked(module)
                if before[name] is not None and after is not None:
                    counted[name] += after - before[name]
            for name, module in modules.items():
                history[name] |= _attributes_with_history(module)
    finally:
        for handle in handles:
            handle.remove()
    return AuditResult(
        _diagnostics(modules, running_stat, forwards, counted, backward_writers, history, completed),
        {name: sorted(attributes) for name, attributes in history.items() if attributes},
        [name for name in modules if name in backward_writers and name not in running_stat],
    )


def _forward_counter(forwards: Counter[str], name: str) -> Callable[..., None]:
    def count(module: torch.nn.Module, args: Any) -> None:
        if module.training and not _in_backward():
            forwards[name] += 1

    return count


def _batches_tracked(module: torch.nn.Module) -> int | None:
    tracked = getattr(module, "num_batches_tracked", None)
    return int(tracked) if isinstance(tracked, torch.Tensor) else None


def _attributes_with_history(module: torch.nn.Module) -> set[str]:
    tensors = dict(module.named_buffers(recurse=False))
    tensors.update((k, v) for k, v in vars(module).items() if isinstance(v, torch.Tensor))
    # Hook-based reparametrizations (spectral_norm, weight_norm) recompute `weight` from a
    # parameter at every forward: history by design, replaced each step, never carried over.
    recomputed = {getattr(hook, "name", None) for hook in module._forward_pre_hooks.values()}
    return {
        name
        for name, value in tensors.items()
        if value is not None and value.grad_fn is not None and name not in recomputed
    }


def _diagnostics(
    modules: dict[str, torch.nn.Module],
    running_stat: dict[str, torch.nn.Module],
    forwards: Counter[str],
    counted: Counter[str],
    backward_writers: set[str],
    history: dict[str, set[str]],
    steps: int,
) -> list[Diagnostic]:
    diagnostics = []
    model = modules[""]
    for name, module in modules.items():
        kind = type(module).__name__
        if name in running_stat:
            mismatch = name in counted and counted[name] != forwards[name]
            if mismatch or name in backward_writers:
                facts = (
                    f"counted {counted[name]} batches over {forwards[name]} training forwards "
                    f"in {steps} steps"
                )
                if name in backward_writers:
                    facts += " and updated its running statistics during backward"
                message = f"`{name}` ({kind}) {facts}"
                diagnostics.append(module_diagnostic("EMA101", message, model, name))
        elif name in backward_writers:
            message = f"`{name or kind}` ({kind}) wrote its buffers during backward"
            diagnostics.append(module_diagnostic("EMA103", message, model, name))
        for attribute in sorted(history[name]):
            where = f"`{name}`" if name else f"the root `{kind}`"
            message = f"`{attribute}` of {where} holds autograd history after a step"
            diagnostics.append(module_diagnostic("EMA201", message, model, name))
    return diagnostics
