"""The model API on models that cannot be deep-copied plainly, that cannot be analysed at all,
or whose code reaches the caller's model: a result or a clear error, and the caller's model
unchanged either way."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ema_lint import check_model, transform
from ema_lint.model import audit_copy, default_step
from ema_lint.model_copies import CallerModelChanged, caller_untouched, isolated_copy


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Averaging(nn.Module):
    """Keeps a running mean of its outputs with their autograd history (EMA201)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.register_buffer("average", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        self.average = 0.9 * self.average + 0.1 * y.mean(0)
        return y


class LazyCheckpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.LazyConv2d(3, 1)
        self.norm = nn.LazyBatchNorm2d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(lambda t: self.norm(self.conv(t)), x, use_reentrant=False)


def test_a_model_already_holding_history_is_transformed_and_left_alone() -> None:
    model = Averaging()
    model(torch.randn(2, 3))
    held = model.average
    assert held.grad_fn is not None
    result = transform(model)
    assert [d.code for d in result.diagnostics] == ["EMA201"] and result.modified
    assert result.model.average.grad_fn is None
    result.model(torch.randn(2, 3))
    assert result.model.average.grad_fn is None
    assert model.average is held and held.grad_fn is not None
    assert [d.code for d in check_model(model, (torch.randn(2, 3),))] == ["EMA201"]


def test_uninitialised_lazy_modules_are_transformed_and_the_caller_stays_lazy() -> None:
    model = LazyCheckpointed()
    result = transform(model)
    assert "EMA101" in {d.code for d in result.diagnostics} and result.modified
    result.model(torch.randn(2, 3, 4, 4)).sum().backward()
    assert result.model.norm.num_batches_tracked.item() == 1
    assert isinstance(model.norm.weight, nn.parameter.UninitializedParameter)
    assert isinstance(model.norm.running_mean, nn.parameter.UninitializedBuffer)


@pytest.mark.parametrize("api", [check_model, transform])
@pytest.mark.parametrize("compile_", [torch.jit.script, lambda m: torch.jit.trace(m, torch.randn(1, 3, 2, 2))])
def test_torchscript_modules_are_refused_with_a_clear_type_error(api, compile_) -> None:
    with pytest.raises(TypeError, match="TorchScript"):
        api(compile_(Block()))


def test_a_hook_closing_over_the_model_runs_on_the_copy() -> None:
    model = Averaging()
    model.register_buffer("calls", torch.zeros(()))
    model.register_forward_hook(lambda module, inputs, output: model.calls.add_(1))
    copy = isolated_copy(model)
    copy(torch.randn(2, 3))
    assert copy.calls.item() == 1 and model.calls.item() == 0
    audit_copy(model, default_step((torch.randn(2, 3),)))
    check_model(model, (torch.randn(2, 3),))
    transform(model, (torch.randn(2, 3),))
    assert model.calls.item() == 0


class ReachesAGlobal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        GLOBAL_MODEL.calls.add_(1)
        return self.linear(x)


GLOBAL_MODEL = ReachesAGlobal()


@pytest.mark.parametrize(
    "run",
    [
        lambda: transform(GLOBAL_MODEL),
        lambda: transform(GLOBAL_MODEL, (torch.randn(2, 3),)),
        lambda: audit_copy(GLOBAL_MODEL, default_step((torch.randn(2, 3),))),
    ],
    ids=["transform", "transform-with-inputs", "audit-copy"],
)
def test_code_reaching_the_caller_through_a_global_is_undone_and_reported(run) -> None:
    with pytest.raises(CallerModelChanged, match="calls"):
        run()
    assert GLOBAL_MODEL.calls.item() == 0


def test_the_guard_restores_values_written_through_data_and_rebound_attributes() -> None:
    model = Averaging()
    weight, average = model.linear.weight, model.average
    before = weight.detach().clone()
    with pytest.raises(CallerModelChanged):
        with caller_untouched(model):
            model.linear.weight.data.mul_(2)
            model.average = torch.ones(3)
            model.linear.bias.data = torch.zeros(5)
    assert model.linear.weight is weight and torch.equal(weight, before)
    assert model.average is average and model.linear.bias.shape == (3,)
    with caller_untouched(model), torch.no_grad():
        model.linear.weight.add_(0)  # written, but to the same values: nothing to report


def test_meta_and_sparse_tensors_are_guarded_without_comparing_what_cannot_be() -> None:
    meta = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).to("meta")
    assert check_model(meta) == []
    sparse = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    sparse.register_buffer("adjacency", torch.eye(4).to_sparse())
    assert check_model(sparse) == [] and not transform(sparse).modified
    with pytest.raises(CallerModelChanged):
        with caller_untouched(sparse), torch.no_grad():
            sparse.adjacency.copy_((2 * torch.eye(4)).to_sparse())
    assert torch.equal(sparse.adjacency.to_dense(), torch.eye(4))


class ReturnsTheGlobalsOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GRADIENT_SINK.linear(x)


GRADIENT_SINK = ReturnsTheGlobalsOutput()


def test_gradients_written_into_the_caller_are_undone_and_reported() -> None:
    with pytest.raises(CallerModelChanged, match="grad"):
        audit_copy(GRADIENT_SINK, default_step((torch.randn(2, 3),)), train=True)
    assert GRADIENT_SINK.linear.weight.grad is None
