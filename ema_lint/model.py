"""Model analysis for CI: `check_model`, `transform`, `audit`.

These import torch and look at a live model; `ema-lint check` never imports this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils._pytree import tree_leaves

from ema_lint.diagnostics import Diagnostic, Location
from ema_lint.model_copies import caller_untouched, isolated_copy
from ema_lint.model_wrappers import unwrap
from ema_lint.passes import (
    ANALYSES,
    FuseEmaUpdatesPass,
    RunningStatsOncePerStepPass,
    Trace,
    history_keeping_attributes,
    replay_targets,
    trace,
)
from ema_lint.passes import audit as _audit
from ema_lint.passes.audit import run_audit
from ema_lint.passes.findings import GRAPH_CODES, class_location
from ema_lint.passes.partial_trace import PartialTraces, failure_reason, trace_parts
from ema_lint.runtime import convert_running_stats, detach_after_forward, replay_on_recompute
from ema_lint.runtime.running_stats import is_converted, is_running_stat_module


# What the audit's real steps measure; graph analyses of parts only infer these.
MEASURED_CODES = frozenset({"EMA101", "EMA103", "EMA201"})


@dataclass
class TransformResult:
    """`model` is the transformed model; `diagnostics` what was found before transforming;
    `modified` whether `model` differs in behaviour from the input."""

    model: torch.nn.Module
    diagnostics: list[Diagnostic] = field(default_factory=list)
    modified: bool = False


def check_model(model: torch.nn.Module, example_inputs: tuple[Any, ...] | None = None) -> list[Diagnostic]:
    """Diagnostics for `model`'s hazards, found by tracing; `model` is not changed.

    A `torch.compile`, DataParallel or DDP wrapper is seen through. When torch.fx cannot
    trace the model as a whole, EMA003 says why and the parts that trace are analysed
    (`ema_lint.passes.partial_trace`); with `example_inputs`, two real training steps on a
    copy (the audit) then decide the hazards they measure.
    """
    model = _eager(unwrap(model).module)
    with caller_untouched(model):
        traced = _trace_or_reason(model)
        if not isinstance(traced, str):
            return _analyse(traced)
        parts = trace_parts(model, traced)
        found = [_not_traceable(model, parts)] + _analyse_parts(parts)
        if example_inputs is not None:
            # The real steps measure these hazards; the parts' graphs only infer them.
            found = [d for d in found if d.code not in MEASURED_CODES]
            found += _audit(isolated_copy(model), default_step(example_inputs))
        return found


def transform(
    model: torch.nn.Module,
    example_inputs: tuple[Any, ...] | None = None,
    inplace: bool = False,
    fuse_ema_updates: bool = False,
) -> TransformResult:
    """Return a model whose running statistics update once per step under checkpointing and
    whose buffer updates keep no autograd history, with the diagnostics that led there.

    The caller's `model` is deep-copied first unless `inplace=True`. The result is the model
    itself (its class, its `forward`, so its checkpointing): recomputed running-stat modules
    are converted in place (EMA101), other recomputed modules that write buffers replay them
    (EMA103, `ema_lint.runtime.replay_on_recompute`, when a module's forward is what the
    checkpoint recomputes), and each attribute that keeps autograd history (EMA201) is
    detached after the innermost forward that encloses its writes and reads
    (`detach_after_forward`).

    `fuse_ema_updates=True` also replaces per-tensor EMA updates in the forward (EMA301) by
    fused `torch._foreach_*` calls, bit for bit, when the model has no checkpoint regions; the
    result is then a GraphModule (history is detached after its forward). It pays off on an
    accelerator, where it saves kernel launches; on a CPU it is about as fast as the loop.

    When torch.fx cannot trace the model, every running-stat module is converted (the runtime
    detects recomputation itself, so this needs no graph), EMA003 says why, and the EMA103 and
    EMA201 findings of the parts that trace are fixed as above; with `example_inputs`, two
    real steps on a copy decide those instead.

    A wrapped model (`torch.compile`, DataParallel, DDP) gives back the same wrapper kind with
    the caller's settings around the fixed module; `inplace=True` keeps the caller's
    DataParallel or DDP wrapper and is refused for a compiled model.
    """
    wrappers = unwrap(model)
    if wrappers.kinds:
        if inplace and "torch.compile" in wrappers.kinds:
            raise TypeError(
                "transform(inplace=True) cannot change a compiled model's module under its compiled "
                "code: transform the module before `torch.compile`, or pass inplace=False"
            )
        inner = transform(wrappers.module, example_inputs, inplace, fuse_ema_updates)
        wrapped = model if inplace else wrappers.rewrap(inner.model)
        return TransformResult(wrapped, inner.diagnostics, inner.modified)
    model = _eager(model)
    if inplace:
        return _transform(model, example_inputs, fuse_ema_updates, caller=model)
    with caller_untouched(model):
        return _transform(isolated_copy(model), example_inputs, fuse_ema_updates, caller=None)


def _transform(
    target: torch.nn.Module,
    example_inputs: tuple[Any, ...] | None,
    fuse_ema_updates: bool,
    caller: torch.nn.Module | None,
) -> TransformResult:
    """`transform` of `target`; `caller` is the caller's model when it is `target` itself,
    so that the audit's steps (on a copy) must not reach it."""
    traced = _trace_or_reason(target)
    if isinstance(traced, str):
        return _fall_back(target, traced, example_inputs, caller)
    diagnostics = _analyse(traced)
    once = RunningStatsOncePerStepPass(traced.regions)(traced.graph_module)
    modified = once.modified
    result_model: torch.nn.Module = target
    if fuse_ema_updates and not traced.regions and any(d.code == "EMA301" and d.fix for d in diagnostics):
        fused = FuseEmaUpdatesPass()(traced.graph_module)
        if fused.modified:
            result_model, modified = fused.graph_module, True
    if result_model is target:
        modified |= _replay_and_detach(target, traced)
        return TransformResult(result_model, diagnostics, modified)
    for module in replay_targets(traced).values():
        replay_on_recompute(module)
        modified = True
    history = history_keeping_attributes(traced)
    if history:
        # The graph module runs every forward inline, so only its own hook would fire.
        detach_after_forward(result_model, [name for _, names in history.values() for name in names])
        modified = True
    return TransformResult(result_model, diagnostics, modified)


def audit(model: torch.nn.Module, step_fn: Callable[[torch.nn.Module], Any], steps: int = 2) -> list[Diagnostic]:
    """Ground truth: run `step_fn(model)` (forward and backward) `steps` times and report the
    hazards the steps showed. `model` is trained by these steps; pass a copy to keep it."""
    return _audit(model, step_fn, steps)


def audit_copy(
    model: torch.nn.Module, step_fn: Callable[[torch.nn.Module], Any], steps: int = 2, train: bool = False
) -> list[Diagnostic]:
    """`audit` on a copy of `model` (put in training mode first when `train`); `model` is not
    changed. Raises `CallerModelChanged` when the steps reached `model` all the same (through
    a module global), after putting its tensors back."""
    with caller_untouched(model):
        duplicate = isolated_copy(model)
        return _audit(duplicate.train() if train else duplicate, step_fn, steps)


def default_step(example_inputs: tuple[Any, ...]) -> Callable[[torch.nn.Module], None]:
    """A training step for the audit: forward `example_inputs` as given (what requires grad
    stays as the caller made it), backward the sum of every floating output that carries
    gradient, wherever it sits in the output (`ModelOutput`, dicts, tuples, dataclasses)."""

    def step(model: torch.nn.Module) -> None:
        carrying = [
            leaf.abs() if leaf.is_complex() else leaf
            for leaf in _tensor_leaves(model(*example_inputs))
            if leaf.requires_grad
        ]
        if carrying:
            torch.stack([leaf.float().sum() for leaf in carrying]).sum().backward()

    return step


def _tensor_leaves(value: Any) -> Iterator[torch.Tensor]:
    for leaf in tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            yield leaf
        elif dataclasses.is_dataclass(leaf) and not isinstance(leaf, type):
            # A dataclass torch's pytree does not know is one leaf to it.
            for item in dataclasses.fields(leaf):
                yield from _tensor_leaves(getattr(leaf, item.name))


def _by_module(history: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, list[str]]:
    """Module -> the names to detach after its forward, relative to it."""
    names: dict[str, list[str]] = {}
    for module, qualified in history.values():
        for name in qualified:
            names.setdefault(module, []).append(name[len(module) + 1 :] if module else name)
    return names


def _eager(model: torch.nn.Module) -> torch.nn.Module:
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "a TorchScript module (torch.jit.script or torch.jit.trace) keeps no Python forward to "
            "analyse or fix: pass the eager module it was made from"
        )
    return model


def _trace_or_reason(model: torch.nn.Module) -> Trace | str:
    try:
        return trace(model)
    except Exception as error:  # any failure of user code under tracing means "not traceable"
        return failure_reason(error)


def _analyse(traced: Trace) -> list[Diagnostic]:
    return [diagnostic for analysis in ANALYSES for diagnostic in analysis(traced)]


def _analyse_parts(parts: PartialTraces) -> list[Diagnostic]:
    return [diagnostic for part in parts.traces for diagnostic in _analyse(part)]


def _not_traceable(model: torch.nn.Module, parts: PartialTraces) -> Diagnostic:
    name, severity = GRAPH_CODES["EMA003"]
    path, line = class_location(type(model))
    untraced = len(parts.untraced) - 1
    also = f", {untraced} submodules did not either" if untraced else ""
    count = len(parts.traces)
    return Diagnostic(
        code="EMA003",
        name=name,
        message=(
            f"model could not be traced: {parts.untraced['']}{also}; "
            f"analysed the {count} {'part' if count == 1 else 'parts'} of it that trace"
        ),
        path=path,
        start=Location(line, 1),
        end=Location(line, 1),
        severity=severity,
        module="",
    )


def _fall_back(
    target: torch.nn.Module,
    reason: str,
    example_inputs: tuple[Any, ...] | None,
    caller: torch.nn.Module | None,
) -> TransformResult:
    parts = trace_parts(target, reason)
    diagnostics = [_not_traceable(target, parts)] + _analyse_parts(parts)
    found = None
    if example_inputs is not None:
        with caller_untouched(caller) if caller is not None else contextlib.nullcontext():
            found = run_audit(isolated_copy(target), default_step(example_inputs))
    modified = any(_has_running_stats(m) for m in target.modules())
    convert_running_stats(target)
    if found is None:
        for part in parts.traces:
            modified |= _replay_and_detach(target, part)
        return TransformResult(target, diagnostics, modified)
    diagnostics = [d for d in diagnostics if d.code not in MEASURED_CODES] + found.diagnostics
    for name in found.buffer_writers_in_backward:
        replay_on_recompute(target.get_submodule(name))
        modified = True
    # The audit knows owners, not writers: the root's forward encloses every write.
    history = [f"{owner}.{name}" if owner else name for owner, names in found.attributes_with_history.items() for name in names]
    if history:
        detach_after_forward(target, history)
        modified = True
    return TransformResult(target, diagnostics, modified)


def _replay_and_detach(target: torch.nn.Module, traced: Trace) -> bool:
    """Apply the EMA103 and EMA201 remedies `traced` shows to `target`; whether any applied."""
    modified = False
    for module in replay_targets(traced).values():
        replay_on_recompute(module)
        modified = True
    for module, names in _by_module(history_keeping_attributes(traced)).items():
        detach_after_forward(target.get_submodule(module), names)
        modified = True
    return modified


def _has_running_stats(module: torch.nn.Module) -> bool:
    return is_running_stat_module(module) and not is_converted(module)
