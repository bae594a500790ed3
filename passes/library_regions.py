"""Checkpoint regions that a module's own flags imply, for forwards torch.fx cannot trace.

Libraries switch checkpointing on with a flag the forward reads:

- a module that checkpoints its own forward: a Hugging Face `GradientCheckpointingLayer`
  with `gradient_checkpointing` set (in training, as its forward checks), torch's
  `CheckpointWrapper`, an OpenMMLab block with `with_cp`;
- a module that checkpoints its block containers (`nn.Sequential` / `nn.ModuleList`
  children): timm's `grad_checkpointing`, `use_checkpoint` (Swin and the many models built
  like it), and `gradient_checkpointing` in training on a Hugging Face module from before
  `GradientCheckpointingLayer` (transformers < 4.52 and remote code), where the encoder's
  loop checkpoints each layer. Where a module holds such layers, its own
  `gradient_checkpointing` flag is a leftover the forward no longer reads.

A traced forward shows its checkpoint calls exactly; these regions stand in only where a
module's forward did not trace, so they are the modules it would run under checkpoint if
it calls them, which the flags' libraries do.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from ema_lint.passes.tracer import CheckpointRegion, _qualified_name

_CONTAINER_FLAGS = ("grad_checkpointing", "use_checkpoint")


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
    if getattr(module, "with_cp", None) is True:
        return _region(torch.utils.checkpoint.checkpoint, name, name, "with_cp")
    return None


def child_regions(module: torch.nn.Module, name: str) -> dict[str, CheckpointRegion]:
    """Child name -> the region `module`'s forward runs that child in, when a flag says so."""
    if _is_hugging_face_layer(module) or not (
        any(getattr(module, flag, None) is True for flag in _CONTAINER_FLAGS) or _checkpoints_its_layers(module)
    ):
        return {}
    function = getattr(module, "_gradient_checkpointing_func", None) or torch.utils.checkpoint.checkpoint
    flag = next((f for f in _CONTAINER_FLAGS if getattr(module, f, None) is True), "gradient_checkpointing")
    return {
        child_name: _region(function, name, f"{name}.{child_name}" if name else child_name, flag)
        for child_name, child in module.named_children()
        if isinstance(child, (torch.nn.Sequential, torch.nn.ModuleList))
    }


def _checkpoints_its_layers(module: torch.nn.Module) -> bool:
    """A Hugging Face encoder of the layout before `GradientCheckpointingLayer`."""
    return (
        getattr(module, "gradient_checkpointing", None) is True
        and module.training
        and not any(_is_hugging_face_layer(m) for m in module.modules())
    )


def _is_hugging_face_layer(module: torch.nn.Module) -> bool:
    # By name, so analysing a model never imports transformers.
    return any(
        cls.__name__ == "GradientCheckpointingLayer" and cls.__module__.startswith("transformers.")
        for cls in type(module).__mro__
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
