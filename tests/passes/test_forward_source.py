"""The submodules an untraceable forward checkpoints, read from source against the live module."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from ema_lint.passes.forward_source import checkpoint_calls


def _targets(module: nn.Module) -> list[tuple[str, ...]]:
    return [tuple(sorted(call.targets)) for call in checkpoint_calls(module)]


class Stages(nn.Module):
    """timm's shape: a flag, `torch.jit.is_scripting()`, a slice of a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.body = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))

    def forward(self, x):
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = self.body[:1](x)
            return checkpoint_sequential(self.body[2:], 1, x, use_reentrant=False)
        return self.body(x)


def test_a_call_counts_only_when_its_flags_hold_on_the_live_module():
    model = Stages()
    assert _targets(model) == []
    model.grad_checkpointing = True
    [call] = checkpoint_calls(model)
    assert (call.targets, call.entry, call.use_reentrant) == (("body.2", "body.3"), "checkpoint_sequential", False)


class Encoder(nn.Module):
    """Hugging Face's layout before GradientCheckpointingLayer."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([nn.BatchNorm1d(3) for _ in range(2)])
        self.gradient_checkpointing = True
        self._gradient_checkpointing_func = checkpoint

    def forward(self, hidden):
        for i, layer_module in enumerate(self.layer):
            if self.gradient_checkpointing and self.training:
                hidden = self._gradient_checkpointing_func(layer_module.__call__, hidden)
            else:
                hidden = layer_module(hidden)
        return hidden


def test_a_loop_variable_resolves_to_its_container_and_training_is_read():
    model = Encoder().train()
    assert _targets(model) == [("layer",)]
    assert _targets(model.eval()) == []


class WithCp(nn.Module):
    """OpenMMLab's shape: an inner function, a method given by name, a conditional expression."""

    def __init__(self) -> None:
        super().__init__()
        self.with_cp = True
        self.conv = nn.Conv2d(3, 3, 1)
        self.norm = nn.BatchNorm2d(3)
        self.tail = nn.BatchNorm2d(3)
        self.unused = nn.BatchNorm2d(3)

    def forward(self, x):
        def inner(y):
            return self.norm(self.conv(y))

        x = checkpoint(inner, x) if self.with_cp and x.requires_grad else inner(x)
        return checkpoint(self._tail, x)

    def _tail(self, x):
        return self.tail(x)


def test_inner_functions_and_methods_resolve_to_the_submodules_they_call():
    assert _targets(WithCp()) == [("conv", "norm"), ("tail",)]
    model = WithCp()
    model.with_cp = False
    assert _targets(model) == [("tail",)]
