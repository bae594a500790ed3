"""Checkpoint regions a module opens around its own forward, for forwards torch.fx cannot
trace: a Hugging Face `GradientCheckpointingLayer` with `gradient_checkpointing` set (in
training, as its forward checks), whose checkpoint call sits in transformers' wrapper rather
than the layer's source, and torch's `CheckpointWrapper`. Checkpoint calls in a forward's own
source are read by `forward_source`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from ema_lint.passes.forward_source import CheckpointCall
from ema_lint.passes.tracer import CheckpointRegion, _qualified_name

def own_region(module: torch.nn.Module, name: str) -> CheckpointRegion | None:
    """The region `module`'s forward runs its own body in, when a flag says it does."""
    if _is_hugging_face_layer(module):
        if module.gradient_checkpointing is True and module.training:
            return _region(getattr(module, "_gradient_checkpointing_func", None), name, name, "gradient_checkpointing")
        return None
    if isinstance(module, CheckpointWrapper):
        return _region(
            getattr(module, "checkpoint_fn", None), name, f"{name}._checkpoint_wrapped_module", "CheckpointWrapper"
        )
    return None


def _is_hugging_face_layer(module: torch.nn.Module) -> bool:
    # By name, so analysing a model never imports transformers.
    return any(
        cls.__name__ == "GradientCheckpointingLayer" and cls.__module__.startswith("transformers.")
        for cls in type(module).__mro__
    )


def source_region(call: CheckpointCall, caller: str) -> CheckpointRegion:
    """The region of a checkpoint call read from `caller`'s source."""
    return CheckpointRegion(
        id=0,
        entry=call.entry,
        function=", ".join(f"{caller}.{t}" if caller else t for t in call.targets),
        use_reentrant=call.use_reentrant,
        options={},
        parent=None,
        module=caller,
        origin=call.origin,
    )


def _region(function: Any, caller: str, checkpointed: str, flag: str) -> CheckpointRegion:
    """A region entered through `function` (a checkpoint entry point, possibly a
    `functools.partial` of one with its keyword arguments) because of `flag` on the `caller`
    module, ids set by the caller's chain."""
    keywords: dict[str, Any] = {}
    while isinstance(function, functools.partial):
        keywords = {**function.keywords, **keywords}
        function = function.func
    options = {k: v for k, v in keywords.items() if k != "use_reentrant"}
    return CheckpointRegion(
        id=0,
        entry=_qualified_name(function) if function is not None else "torch.utils.checkpoint.checkpoint",
        function=checkpointed,
        use_reentrant=keywords.get("use_reentrant"),
        options={k: (_qualified_name(v) if callable(v) else v) for k, v in options.items()},
        parent=None,
        module=caller,
        context_fn=options.get("context_fn"),
        origin=f"`{flag}` of `{caller or 'the model'}`",
    )
