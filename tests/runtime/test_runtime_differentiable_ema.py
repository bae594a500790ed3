import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ema_lint.runtime import DifferentiableEMA, ema_update

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from live_tensor_bytes import LiveTensorBytes  # noqa: E402

# 0.75 and 1 - 0.75 = 0.25 are exact binary fractions, so closed-form gradients match exactly.
DECAY = 0.75
BOUNDED_MODES = ["constant", "detach", "straight_through", "trace", "truncated"]
HORIZON = 3


def make_ema(mode, w, shape=(3,), horizon=HORIZON):
    parameters = [w] if mode in ("trace", "truncated") else None
    horizon = horizon if mode == "truncated" else None
    return DifferentiableEMA(DECAY, mode, shape=shape, parameters=parameters, horizon=horizon, dtype=w.dtype)


def samples(steps, dtype=torch.float64):
    return torch.randn(steps, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)


def test_forward_value_identical_in_every_mode_and_to_the_naive_recursion():
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    xs = samples(20)
    emas = {mode: make_ema(mode, w) for mode in BOUNDED_MODES}
    naive = torch.zeros(3, dtype=torch.float64)
    for x in xs:
        sample = torch.tanh(w * x)
        outs = {mode: ema(sample) for mode, ema in emas.items()}
        naive = DECAY * naive + (1 - DECAY) * sample.detach()
        for mode, out in outs.items():
            assert torch.equal(out, naive), mode
        assert torch.equal(ema_update(naive, sample, DECAY, "detach"), DECAY * naive + (1 - DECAY) * sample)


def gradient_after(mode, steps, horizon=HORIZON, train=False):
    """d/dw of sum(g * average) after `steps` updates with sample_t = w * x_t.

    d sample_t / dw = diag(x_t) whatever w is, so with `train=True` (an in-place SGD step on w
    after every update) the closed forms still hold."""
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    ema = make_ema(mode, w, horizon=horizon)
    xs = samples(steps)
    for step, x in enumerate(xs):
        out = ema(w * x)
        if train and step + 1 < steps:
            out.sum().backward()
            with torch.no_grad():
                w -= 0.1 * w.grad
            w.grad = None
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    if mode == "constant":
        assert not out.requires_grad
        return None, xs, g
    (grad,) = torch.autograd.grad((g * out).sum(), w)
    return grad, xs, g


def test_constant_has_no_gradient():
    gradient_after("constant", 3)


def test_detach_gradient_is_the_newest_term_scaled():
    grad, xs, g = gradient_after("detach", 5)
    assert torch.equal(grad, (1 - DECAY) * g * xs[-1])


def test_straight_through_gradient_is_the_current_sample_jacobian():
    grad, xs, g = gradient_after("straight_through", 5)
    assert torch.equal(grad, g * xs[-1])


def test_trace_gradient_is_the_closed_form_sum():
    grad, xs, g = gradient_after("trace", 5)
    steps = len(xs)
    weights = [(1 - DECAY) * DECAY ** (steps - 1 - k) for k in range(steps)]
    closed_form = g * sum(weight * x for weight, x in zip(weights, xs))
    torch.testing.assert_close(grad, closed_form, rtol=0, atol=1e-15)


@pytest.mark.parametrize("train", [False, True])
def test_truncated_gradient_is_the_closed_form_over_the_window(train):
    grad, xs, g = gradient_after("truncated", 7, horizon=HORIZON, train=train)
    window = [(1 - DECAY) * DECAY**j * xs[-1 - j] for j in range(HORIZON)]
    torch.testing.assert_close(grad, g * sum(window), rtol=0, atol=1e-15)


def test_truncated_with_a_horizon_beyond_the_steps_equals_trace():
    truncated, _, _ = gradient_after("truncated", 5, horizon=8)
    trace, _, _ = gradient_after("trace", 5)
    torch.testing.assert_close(truncated, trace, rtol=0, atol=1e-15)


def test_trace_matches_full_history_autograd_at_1000_steps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    params = list(net.parameters())
    decay = 0.99
    ema = DifferentiableEMA(decay, "trace", shape=(2,), parameters=params, dtype=torch.float64)
    naive = torch.zeros(2, dtype=torch.float64)
    inputs = torch.randn(1000, 4, dtype=torch.float64)
    for x in inputs:
        sample = net(x)
        out = ema(sample)
        naive = decay * naive + (1 - decay) * sample  # keeps the whole history
    weights = torch.tensor([0.7, -1.3], dtype=torch.float64)
    exact = torch.autograd.grad((weights * naive).sum(), params)
    traced = torch.autograd.grad((weights * out).sum(), params)
    error = max((a - b).abs().max().item() for a, b in zip(exact, traced))
    assert error <= 1e-12


@pytest.mark.parametrize("mode", BOUNDED_MODES)
def test_state_dict_round_trip(mode):
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    xs = samples(6)
    ema = make_ema(mode, w)
    for x in xs[:4]:
        ema(w * x)
    state = ema.state_dict()
    expected_keys = {"average", "updates", *{"trace": ["trace_0"], "truncated": ["window_0", "window_next"]}.get(mode, [])}
    assert set(state) == expected_keys
    restored = make_ema(mode, w)
    restored.load_state_dict(state)
    for x in xs[4:]:
        a, b = ema(w * x), restored(w * x)
        assert torch.equal(a, b)
        if mode != "constant":
            assert torch.equal(torch.autograd.grad(a.sum(), w)[0], torch.autograd.grad(b.sum(), w)[0])


def peak_bytes(mode, steps):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    ema = None
    if mode != "naive":
        jacobian_mode = mode in ("trace", "truncated")
        ema = DifferentiableEMA(
            0.99,
            mode,
            parameters=net.parameters() if jacobian_mode else None,
            horizon=HORIZON if mode == "truncated" else None,
        )
    inputs = torch.randn(steps, 32, 8)
    average = torch.zeros(())
    with LiveTensorBytes() as tracker:
        for x in inputs:
            sample = net(x).exp().mean()
            if mode == "naive":
                average = 0.99 * average + 0.01 * sample
                average.backward(retain_graph=True)
            else:
                out = ema(sample)
                if out.requires_grad:
                    out.backward()
    return tracker.peak


@pytest.mark.parametrize("mode", BOUNDED_MODES)
def test_memory_is_bounded(mode):
    assert peak_bytes(mode, 100) <= 1.05 * peak_bytes(mode, 10)


def test_naive_average_grows_with_the_number_of_steps():
    # Each naive backward walks the whole history (quadratic time), so few steps suffice.
    assert peak_bytes("naive", 40) > 3 * peak_bytes("naive", 10)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="use DifferentiableEMA"):
        ema_update(torch.zeros(()), torch.zeros(()), 0.9, "trace")
    with pytest.raises(ValueError, match="mode must be one of"):
        DifferentiableEMA(0.9, "exact")
    with pytest.raises(ValueError, match='exactly when mode is "trace" or "truncated"'):
        DifferentiableEMA(0.9, "trace")
    with pytest.raises(ValueError, match='pass horizon=K >= 1 exactly when mode="truncated"'):
        DifferentiableEMA(0.9, "truncated", parameters=[torch.zeros(1)], horizon=0)
    with pytest.raises(ValueError, match=r"sample shape \(2,\) != average shape \(\)"):
        DifferentiableEMA(0.9)(torch.zeros(2))


@pytest.mark.parametrize("mode", ["trace", "truncated"])
def test_an_update_under_no_grad_is_refused_not_silently_wrong(mode):
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ema = make_ema(mode, w)
    ema(w * samples(1)[0])
    with torch.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        ema(w * samples(2)[1])


@pytest.mark.parametrize("mode", ["trace", "truncated"])
def test_a_sample_depending_on_unlisted_tensors_is_refused(mode):
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ema = make_ema(mode, w)
    with pytest.raises(ValueError, match="not in parameters"):
        ema(w * upstream)
    # listed, it gets its exact gradient too
    both = DifferentiableEMA(DECAY, mode, shape=(3,), parameters=[w, upstream], horizon=HORIZON if mode == "truncated" else None, dtype=w.dtype)
    both(w * upstream).sum().backward()
    assert torch.equal(upstream.grad, (1 - DECAY) * w.detach())


def test_a_frozen_parameter_in_the_list_gets_no_gradient_and_the_others_are_exact():
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    frozen = torch.randn(3, dtype=torch.float64)
    ema = DifferentiableEMA(DECAY, "trace", shape=(3,), parameters=[w, frozen], dtype=w.dtype)
    xs = samples(3)
    for x in xs:
        out = ema(w * frozen * x)
    out.sum().backward()
    expected = sum((1 - DECAY) * DECAY ** (len(xs) - 1 - i) * frozen * x for i, x in enumerate(xs))
    assert torch.allclose(w.grad, expected, rtol=0, atol=1e-15) and frozen.grad is None


def test_a_deep_copy_keeps_sending_gradients_to_the_model():
    import copy

    model = nn.Linear(3, 1).double()
    ema = DifferentiableEMA(DECAY, "trace", shape=(1,), parameters=list(model.parameters()), dtype=torch.float64)
    x = samples(1)[0]
    alone = copy.deepcopy(ema)
    alone(model(x)).sum().backward()
    assert model.weight.grad is not None and torch.equal(model.weight.grad, (1 - DECAY) * x.reshape(1, 3))

    holder = nn.ModuleDict({"model": model, "ema": ema})
    copied = copy.deepcopy(holder)
    assert copied["ema"].trace_parameters[0] is copied["model"].weight


def test_an_unpickled_trace_needs_its_parameters_bound():
    import pickle

    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ema = make_ema("trace", w)
    ema(w * samples(1)[0])
    restored = pickle.loads(pickle.dumps(ema))
    with pytest.raises(RuntimeError, match="bind"):
        restored(w * samples(2)[1])
    restored.bind([w])
    assert torch.equal(restored(w * samples(2)[1]), ema(w * samples(2)[1]))


def test_state_above_the_memory_budget_is_refused_with_the_mode_that_fits():
    weights = torch.zeros(1024, 1024, requires_grad=True)
    with pytest.raises(ValueError, match="straight_through"):
        DifferentiableEMA(0.9, "trace", shape=(1024,), parameters=[weights])
    assert DifferentiableEMA.state_bytes((1024,), [weights], "trace", None, torch.float32) == 1024 * 1024 * 1024 * 4


@pytest.mark.parametrize("mode", BOUNDED_MODES)
def test_reset_bias_correction_and_dtype(mode):
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    parameters = [w] if mode in ("trace", "truncated") else None
    ema = DifferentiableEMA(
        DECAY, mode, shape=(3,), parameters=parameters, horizon=HORIZON if mode == "truncated" else None,
        dtype=torch.float32, bias_correction=True,
    )
    x = samples(1)[0]
    first = ema(w * x)
    # the first corrected average is the sample itself (in the declared dtype)
    assert torch.allclose(first.double(), (w * x).detach(), rtol=1e-6, atol=0)
    assert ema.average.dtype == torch.float32 and int(ema.updates) == 1
    ema.reset()
    assert int(ema.updates) == 0 and torch.equal(ema.average, torch.zeros(3))
    assert all(not b.any() for name, b in ema.named_buffers() if name.startswith(("trace_", "window_")))


def test_a_refused_update_is_not_counted():
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ema = DifferentiableEMA(DECAY, "trace", shape=(3,), parameters=[w], dtype=w.dtype, bias_correction=True)
    with torch.no_grad(), pytest.raises(RuntimeError):
        ema(w * samples(1)[0])
    assert int(ema.updates) == 0
    assert torch.allclose(ema(w * samples(1)[0]), (w * samples(1)[0]).detach(), rtol=0, atol=1e-15)


def test_a_model_copy_follows_its_parameters_whatever_the_registration_order():
    import copy

    class Critic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.Linear(3, 1).double()
            self.ema = DifferentiableEMA(DECAY, "trace", shape=(), parameters=list(layer.parameters()), dtype=torch.float64)
            self.layer = layer  # registered after the EMA that traces it

    original = Critic()
    duplicate = copy.deepcopy(original)
    x = samples(1)[0]
    duplicate.ema(duplicate.layer(x).squeeze()).backward()
    assert duplicate.layer.weight.grad is not None and original.layer.weight.grad is None


def test_a_state_saved_before_the_update_count_loads():
    state = DifferentiableEMA(DECAY, "detach", shape=(2,)).state_dict()
    del state["updates"]
    restored = DifferentiableEMA(DECAY, "detach", shape=(2,))
    restored.load_state_dict(state)
    assert int(restored.updates) == 0
