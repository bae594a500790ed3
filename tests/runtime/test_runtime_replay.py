"""replay_buffers: a region with spectral_norm (both APIs) and BatchNorm trains exactly as un-checkpointed."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, spectral_norm
from torch.utils.checkpoint import checkpoint

import copy
import pickle

from ema_lint.runtime import replay_buffers, replay_on_recompute

STEPS = 3


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.region = nn.Sequential(
            spectral_norm(nn.Linear(4, 6)),
            nn.BatchNorm1d(6),
            nn.Tanh(),
            parametrizations.spectral_norm(nn.Linear(6, 5)),
            nn.Tanh(),
        )
        self.head = nn.Linear(5, 2)

    def forward(self, x, mode):
        if mode == "reference":
            return self.head(self.region(x))
        if mode.endswith("reentrant"):
            return self.head(checkpoint(self.region, x, use_reentrant=True))
        early_stop = mode.endswith("early_stop")
        context = {"context_fn": replay_buffers} if mode.startswith("replay") else {}
        return self.head(checkpoint(self.region, x, use_reentrant=False, early_stop=early_stop, **context))


def train(mode, backward_passes=1):
    torch.manual_seed(0)
    model = Net()
    if mode.startswith("module_replay"):
        for stateful in (model.region[0], model.region[1], model.region[3]):
            replay_on_recompute(stateful)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(1)
    trace = []
    for _ in range(STEPS):
        x = torch.randn(8, 4, generator=data, requires_grad=True)
        out = model(x, mode)
        loss = (out * torch.randn(out.shape, generator=data)).sum()
        for i in range(backward_passes):
            loss.backward(retain_graph=i + 1 < backward_passes)
        trace.append((out.detach(), x.grad, [p.grad.clone() for p in model.parameters()]))
        optimizer.step()
        optimizer.zero_grad()
    return model, trace


def same_training(a, b) -> bool:
    (model_a, trace_a), (model_b, trace_b) = a, b
    for (out_a, xg_a, g_a), (out_b, xg_b, g_b) in zip(trace_a, trace_b, strict=True):
        if not (torch.equal(out_a, out_b) and torch.equal(xg_a, xg_b)):
            return False
        if not all(torch.equal(p, q) for p, q in zip(g_a, g_b, strict=True)):
            return False
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    # weight_u/weight_v, parametrizations' _u/_v, running stats, num_batches_tracked, parameters
    return all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize("mode", ["replay_early_stop", "replay_no_early_stop"])
def test_replay_trains_exactly_as_without_checkpoint(mode):
    assert same_training(train("reference"), train(mode))


def test_replay_with_retain_graph_double_backward():
    assert same_training(train("reference", backward_passes=2), train("replay_no_early_stop", backward_passes=2))


def test_without_replay_spectral_norm_changes_the_training():
    """The hazard itself: recomputation steps the power iteration again and the gradients change."""
    assert not same_training(train("reference"), train("plain_early_stop"))


def test_recording_hooks_are_removed_after_the_region():
    from torch.nn.modules import module

    before = (len(module._global_forward_pre_hooks), len(module._global_forward_hooks))
    train("replay_early_stop")
    assert (len(module._global_forward_pre_hooks), len(module._global_forward_hooks)) == before


@pytest.mark.parametrize("mode", ["module_replay_early_stop", "module_replay_no_early_stop", "module_replay_reentrant"])
def test_module_replay_trains_exactly_as_without_checkpoint_at_an_unchanged_call_site(mode):
    assert same_training(train("reference"), train(mode))


def test_module_replay_with_retain_graph_double_backward():
    assert same_training(train("reference", backward_passes=2), train("module_replay_no_early_stop", backward_passes=2))


def test_module_replay_survives_pickling_and_copying():
    # Parametrized modules only serialise through state_dict (a torch rule), so pickling is
    # checked on the old-style spectral_norm.
    block = replay_on_recompute(spectral_norm(nn.Linear(4, 4)))
    for clone in (pickle.loads(pickle.dumps(block)), copy.deepcopy(block)):
        reference = copy.deepcopy(clone)
        x = torch.randn(8, 4, requires_grad=True)
        checkpoint(clone, x, use_reentrant=False).sum().backward()
        reference(x).sum().backward()
        assert torch.equal(clone.weight_orig.grad, reference.weight_orig.grad)
        assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), reference.state_dict().values()))


def _lazy_region() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 6), nn.LazyBatchNorm1d(), nn.Tanh(), spectral_norm(nn.Linear(6, 6)), nn.LazyBatchNorm1d(), nn.Linear(6, 2)
    )


def _steps(model: nn.Module, call) -> list:
    """Three SGD steps of `call(model, x)`; what each step saw and left."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(1)
    trace = []
    for _ in range(STEPS):
        x = torch.randn(8, 4, generator=data, requires_grad=True)
        out = call(model, x)
        (out * torch.randn(out.shape, generator=data)).sum().backward()
        trace.append((out.detach(), x.grad, [p.grad.clone() for p in model.parameters()]))
        optimizer.step()
        optimizer.zero_grad()
    return trace


def _nested(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    def inner(h):
        return checkpoint(model[3:5], h, use_reentrant=False)

    return model[5](checkpoint(lambda h: inner(model[0:3](h)), x, use_reentrant=False))


CALLS = {
    "checkpoint": lambda model, x: checkpoint(model, x, use_reentrant=False),
    "reentrant": lambda model, x: checkpoint(model, x, use_reentrant=True),
    "sequential": lambda model, x: torch.utils.checkpoint.checkpoint_sequential(model, 3, x, use_reentrant=False),
    "nested": _nested,
}


@pytest.mark.parametrize("flavour", sorted(CALLS))
def test_module_replay_on_a_container_with_lazy_modules_in_every_flavour(flavour):
    """The hooks sit on every buffer-owning submodule, so a checkpoint that calls the
    container's children directly (sequential, nested) is covered, and a lazy BatchNorm is
    snapshotted once its first forward has materialised it."""
    reference = _lazy_region()
    expected = _steps(reference, lambda model, x: model(x))
    model = replay_on_recompute(_lazy_region())
    assert same_training((model, _steps(model, CALLS[flavour])), (reference, expected))


def test_replay_buffers_initialises_a_lazy_module_first():
    reference = _lazy_region()
    expected = _steps(reference, lambda model, x: model(x))
    model = _lazy_region()
    trace = _steps(model, lambda model, x: checkpoint(model, x, use_reentrant=False, context_fn=replay_buffers))
    assert same_training((model, trace), (reference, expected))


class TwiceInOneCall(nn.Module):
    """One spectral-norm layer run twice inside one call of the block."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = spectral_norm(nn.Linear(8, 8))

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x)))


def test_module_replay_of_a_block_replays_a_submodule_it_runs_twice_from_the_block_start():
    torch.manual_seed(0)
    reference = TwiceInOneCall()
    model = replay_on_recompute(copy.deepcopy(reference))
    x = torch.randn(4, 8)
    reference(x).sum().backward()
    checkpoint(model, x, use_reentrant=False).sum().backward()
    assert torch.equal(reference.lin.weight_orig.grad, model.lin.weight_orig.grad)
    assert torch.equal(reference.lin.weight_u, model.lin.weight_u)
