"""Exactness matrix: checkpointed training with the fix equals un-checkpointed training, bit for bit."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from ema_lint.runtime import convert_running_stats, recompute_aware, running_stats_context_fn
from ema_lint.runtime.running_stats import is_converted

STEPS = 3


def run_region(region: nn.Sequential, x: torch.Tensor, flavour: str) -> torch.Tensor:
    if flavour == "reference":
        return region(x)
    if flavour == "reentrant":
        return checkpoint(region, x, use_reentrant=True)
    if flavour == "reentrant_recompute_aware":
        return checkpoint(recompute_aware(region), x, use_reentrant=True)
    if flavour == "non_reentrant_early_stop":
        return checkpoint(region, x, use_reentrant=False, early_stop=True)
    if flavour == "non_reentrant_no_early_stop":
        return checkpoint(region, x, use_reentrant=False, early_stop=False)
    if flavour == "context_fn_early_stop":
        return checkpoint(region, x, use_reentrant=False, context_fn=running_stats_context_fn)
    if flavour == "context_fn_no_early_stop":
        return checkpoint(
            region, x, use_reentrant=False, context_fn=running_stats_context_fn, early_stop=False
        )
    if flavour == "sequential_non_reentrant":
        return checkpoint_sequential(region, 2, x, use_reentrant=False)
    if flavour == "sequential_reentrant":
        return checkpoint_sequential(region, 2, x, use_reentrant=True)
    raise ValueError(flavour)


# Flavours that carry their own explicit signal work on an unconverted model.
EXPLICIT_FLAVOURS = {"reentrant_recompute_aware", "context_fn_early_stop", "context_fn_no_early_stop"}
FLAVOURS = [
    "reentrant",
    "reentrant_recompute_aware",
    "non_reentrant_early_stop",
    "non_reentrant_no_early_stop",
    "context_fn_early_stop",
    "context_fn_no_early_stop",
    "sequential_non_reentrant",
    "sequential_reentrant",
]


class Net(nn.Module):
    def __init__(self, region: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.region = region
        self.head = head

    def forward(self, x: torch.Tensor, flavour: str) -> torch.Tensor:
        return self.head(run_region(self.region, x, flavour))


def bn1d():
    region = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5), nn.BatchNorm1d(5))
    return Net(region, nn.Linear(5, 3)), (8, 4)


def conv_region(norm: nn.Module, channels: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), norm, nn.ReLU(), nn.Conv2d(channels, channels, 1))


def bn2d():
    return Net(conv_region(nn.BatchNorm2d(4)), nn.Flatten()), (4, 3, 5, 5)


def bn3d():
    region = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU(), nn.Conv3d(3, 3, 1))
    return Net(region, nn.Flatten()), (2, 2, 3, 4, 4)


def momentum_none():
    return Net(conv_region(nn.BatchNorm2d(4, momentum=None)), nn.Flatten()), (4, 3, 5, 5)


def affine_false():
    return Net(conv_region(nn.BatchNorm2d(4, affine=False)), nn.Flatten()), (4, 3, 5, 5)


def instance_norm():
    norm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    return Net(conv_region(norm), nn.Flatten()), (4, 3, 5, 5)


def lazy_bn():
    return Net(conv_region(nn.LazyBatchNorm2d()), nn.Flatten()), (4, 3, 5, 5)


def shared_bn():
    """The same BatchNorm runs inside the region and again outside it, in one step."""
    shared = nn.BatchNorm2d(4)
    head = nn.Sequential(nn.Conv2d(4, 4, 1), shared, nn.ReLU(), nn.Flatten())
    return Net(conv_region(shared), head), (4, 3, 5, 5)


def timm_batchnorm_act():
    """timm's `BatchNormAct2d` replaces `forward` and calls `F.batch_norm` itself."""
    from vision_models import timm

    BatchNormAct2d = timm.layers.BatchNormAct2d

    return Net(conv_region(BatchNormAct2d(4, act_layer=nn.ReLU)), nn.Flatten()), (4, 3, 5, 5)


MODELS = {
    "timm_batchnorm_act": timm_batchnorm_act,
    "bn1d": bn1d,
    "bn2d": bn2d,
    "bn3d": bn3d,
    "momentum_none": momentum_none,
    "affine_false": affine_false,
    "instance_norm": instance_norm,
    "lazy_bn": lazy_bn,
    "shared_bn": shared_bn,
}


def build(model_name: str) -> tuple[Net, tuple[int, ...]]:
    torch.manual_seed(0)
    return MODELS[model_name]()


def train(model: Net, shape, flavour: str, *, eval_mode=False, backward_passes=1):
    """Train a few SGD steps; return per-step outputs, input grads and parameter grads."""
    model.train(not eval_mode)
    data = torch.Generator().manual_seed(1)
    optimizer = None
    trace = []
    for _ in range(STEPS):
        x = torch.randn(shape, generator=data).requires_grad_()
        out = model(x, flavour)
        weights = torch.randn(out.shape, generator=data)
        loss = (out * weights).sum()
        for i in range(backward_passes):
            loss.backward(retain_graph=i + 1 < backward_passes)
        if optimizer is None:  # lazy modules materialise their parameters on the first forward
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trace.append((out.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}))
        optimizer.step()
        optimizer.zero_grad()
    return trace


def assert_same_training(reference: Net, reference_trace, fixed: Net, fixed_trace) -> None:
    for (out_r, xg_r, g_r), (out_f, xg_f, g_f) in zip(reference_trace, fixed_trace, strict=True):
        assert torch.equal(out_r, out_f)
        assert torch.equal(xg_r, xg_f)
        assert g_r.keys() == g_f.keys()
        for name in g_r:
            assert torch.equal(g_r[name], g_f[name]), name
    state_r, state_f = reference.state_dict(), fixed.state_dict()
    assert state_r.keys() == state_f.keys()
    for key in state_r:  # running_mean, running_var, num_batches_tracked and every parameter
        assert torch.equal(state_r[key], state_f[key]), key


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("model_name", MODELS)
def test_checkpointed_training_equals_reference(model_name, flavour):
    reference, shape = build(model_name)
    reference_trace = train(reference, shape, "reference")
    fixed, _ = build(model_name)
    if flavour not in EXPLICIT_FLAVOURS:
        convert_running_stats(fixed)
    assert_same_training(reference, reference_trace, fixed, train(fixed, shape, flavour))


@pytest.mark.parametrize("flavour", ["reentrant_recompute_aware", "context_fn_early_stop"])
def test_explicit_signal_on_a_converted_model_shields_once(flavour):
    reference, shape = build("shared_bn")
    reference_trace = train(reference, shape, "reference")
    fixed, _ = build("shared_bn")
    convert_running_stats(fixed)
    assert_same_training(reference, reference_trace, fixed, train(fixed, shape, flavour))


@pytest.mark.parametrize("flavour", ["reentrant", "non_reentrant_no_early_stop", "context_fn_no_early_stop"])
def test_retain_graph_double_backward(flavour):
    reference, shape = build("bn2d")
    reference_trace = train(reference, shape, "reference", backward_passes=2)
    fixed, _ = build("bn2d")
    if flavour not in EXPLICIT_FLAVOURS:
        convert_running_stats(fixed)
    assert_same_training(reference, reference_trace, fixed, train(fixed, shape, flavour, backward_passes=2))


@pytest.mark.parametrize("flavour", ["reentrant", "non_reentrant_early_stop", "context_fn_early_stop"])
def test_eval_mode(flavour):
    reference, shape = build("bn2d")
    reference_trace = train(reference, shape, "reference", eval_mode=True)
    fixed, _ = build("bn2d")
    if flavour not in EXPLICIT_FLAVOURS:
        convert_running_stats(fixed)
    assert_same_training(reference, reference_trace, fixed, train(fixed, shape, flavour, eval_mode=True))


@pytest.mark.parametrize("flavour", ["reentrant", "non_reentrant_early_stop", "sequential_non_reentrant"])
def test_without_the_fix_checkpointing_updates_twice(flavour):
    """The hazard itself, so the matrix above cannot pass vacuously."""
    model, shape = build("bn2d")
    train(model, shape, flavour)
    assert model.region[1].num_batches_tracked.item() == 2 * STEPS


def test_no_grad_train_mode_pass_still_updates():
    """`swa_utils.update_bn` and similar recalibration passes run the model under no_grad in train mode."""
    model, shape = build("bn2d")
    convert_running_stats(model)
    reference, _ = build("bn2d")
    x = torch.randn(shape)
    with torch.no_grad():
        model.region(x)
        reference.region(x)
    bn, ref_bn = model.region[1], reference.region[1]
    assert bn.num_batches_tracked.item() == 1
    assert torch.equal(bn.running_mean, ref_bn.running_mean)
    assert torch.equal(bn.running_var, ref_bn.running_var)


def test_conversion_keeps_state_dict_keys_and_pickles():
    model, shape = build("shared_bn")
    keys = list(model.state_dict())
    assert convert_running_stats(model) is model
    assert list(model.state_dict()) == keys
    for restored in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert is_converted(restored.region[1])
        buffer = io.BytesIO()
        torch.save(restored, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        reference, _ = build("shared_bn")
        reference_trace = train(reference, shape, "reference")
        assert_same_training(reference, reference_trace, loaded, train(loaded, shape, "non_reentrant_early_stop"))


def test_conversion_is_idempotent_and_covers_every_running_stat_module():
    model = nn.Sequential(
        nn.BatchNorm1d(3),
        nn.SyncBatchNorm(3),
        nn.InstanceNorm1d(3, track_running_stats=True),
        nn.InstanceNorm1d(3),
        nn.LayerNorm(3),
        nn.GroupNorm(1, 3),
        nn.BatchNorm1d(3, track_running_stats=False),
    )
    convert_running_stats(model)
    convert_running_stats(model)
    assert [is_converted(m) for m in model] == [True, True, True, False, False, False, False]
    assert [len(m._forward_pre_hooks) for m in model] == [1, 1, 1, 0, 0, 0, 0]


def test_real_buffers_restored_when_early_stop_aborts_recomputation():
    """Early stop raises inside a forward of the region; the real buffer objects must come back."""
    model, shape = build("bn2d")
    convert_running_stats(model)
    bn = model.region[1]
    buffers = {name: bn._buffers[name] for name in ("running_mean", "running_var", "num_batches_tracked")}
    model(torch.randn(shape, requires_grad=True), "non_reentrant_early_stop").sum().backward()
    assert {name: bn._buffers[name] for name in buffers} == buffers
    assert bn.num_batches_tracked.item() == 1


def test_ambient_signal_private_call_still_means_forward_inside_backward():
    """Pins `torch._C._current_graph_task_id` (the test behind ModuleTracker.is_bw)."""
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(torch._C._current_graph_task_id())
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            seen.append(torch._C._current_graph_task_id())
            return grad

    Probe.apply(torch.ones(2, requires_grad=True)).sum().backward()
    assert seen[0] == -1
    assert seen[1] != -1
