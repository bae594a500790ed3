"""Models torch.fx cannot trace as a whole: the parts that trace, inside the regions library
flags imply, against the modules a real step doubles."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import ema_lint


def _doubled(checkpointed: nn.Module, reference: nn.Module, inputs: torch.Tensor) -> set[str]:
    """The independent counter: modules whose batch count one step moved differently."""
    counts = []
    for model in (copy.deepcopy(checkpointed), copy.deepcopy(reference)):
        model(inputs).sum().backward()
        counts.append({n: int(b) for n, b in model.named_buffers() if n.endswith("num_batches_tracked")})
    return {n.rpartition(".")[0] for n in counts[0] if counts[0][n] != counts[1][n]}


def _reported(model: nn.Module) -> set[str]:
    diagnostics = ema_lint.check_model(model)
    assert diagnostics[0].code == "EMA003"
    return {d.module for d in diagnostics if d.code == "EMA101"}


class Fusion(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.residual_norm = nn.BatchNorm2d(4)

    def forward(self, hidden, residual=None):
        if residual is not None:
            hidden = hidden + self.residual_norm(residual)
        return self.conv(hidden)


class WithCheckpointFlag(nn.Module):
    """OpenMMLab's `with_cp` around a body whose data-dependent branch does not trace."""

    def __init__(self) -> None:
        super().__init__()
        self.with_cp = False
        self.proj = nn.Conv2d(4, 4, 3, padding=1)
        self.fusion = Fusion()

    def forward(self, x):
        def body(x):
            if x.std() > 0:
                x = x * 1.0
            return self.fusion(self.proj(x), x)

        return checkpoint(body, x, use_reentrant=False) if self.with_cp else body(x)


class Untraceable(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = block

    def forward(self, x):
        if x.mean() > 1e9:
            return x
        return self.block(self.stem(x))


def test_a_part_is_traced_with_its_optional_inputs_given():
    torch.manual_seed(0)
    reference = Untraceable(WithCheckpointFlag()).train()
    model = copy.deepcopy(reference)
    model.block.with_cp = True
    inputs = torch.randn(2, 3, 8, 8)
    assert _doubled(model, reference, inputs) == {"block.fusion.residual_norm"} == _reported(model)


class Layer(nn.Module):
    """A layer that checkpoints its own forward through a function stored on it as is."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)
        self.checkpoint_function = None

    def forward(self, x):
        if self.checkpoint_function is not None:
            return self.checkpoint_function(self._body, x, use_reentrant=False)
        return self._body(x)

    def _body(self, x):
        return self.norm(self.linear(x))


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Layer(), Layer()])

    def forward(self, x):
        if x.sum() > 1e9:
            return x
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_checkpoint_function_stored_on_a_layer_opens_a_region():
    torch.manual_seed(0)
    reference = Stack().train()
    model = copy.deepcopy(reference)
    for layer in model.layers:
        layer.checkpoint_function = checkpoint
    inputs = torch.randn(8, 4)
    assert _doubled(model, reference, inputs) == {"layers.0.norm", "layers.1.norm"} == _reported(model)
