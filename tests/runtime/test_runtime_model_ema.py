import copy

import pytest
import torch
from torch import nn

from ema_lint.runtime import ModelEMA, foreach_ema_update


def tensors(dtype_sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=generator).to(dtype) for dtype, n in dtype_sizes]


MIXED = [(torch.float32, 1), (torch.float64, 7), (torch.float32, 1000), (torch.bfloat16, 33), (torch.float16, 5), (torch.float64, 1)]


@pytest.mark.parametrize("decay", [0.998, 0.9999, 1 / 3])
@pytest.mark.parametrize("exact", [True, False])
def test_foreach_update_is_bit_identical_to_the_python_loop(exact, decay):
    emas, currents = tensors(MIXED, 0), tensors(MIXED, 1)
    expected = [e.clone() for e in emas]
    for _ in range(3):
        for e, m in zip(expected, currents):
            if exact:
                e.mul_(decay).add_(m, alpha=1 - decay)
            else:
                e.lerp_(m, 1 - decay)
        foreach_ema_update(emas, currents, decay, exact=exact)
    for got, want in zip(emas, expected, strict=True):
        assert got.dtype == want.dtype
        assert torch.equal(got, want)


def test_model_tensors_of_another_dtype_are_converted_and_integers_copied():
    emas = [torch.zeros(4), torch.tensor(3)]
    currents = [torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.bfloat16), torch.tensor(9)]
    foreach_ema_update(emas, currents, 0.75)
    assert torch.equal(emas[0], torch.tensor([0.25, 0.5, 0.75, 1.0]))
    assert emas[0].dtype == torch.float32
    assert torch.equal(emas[1], torch.tensor(9))


def test_mismatched_lists_are_rejected():
    with pytest.raises(ValueError, match="ema_tensors has 1 tensors but model_tensors has 2"):
        foreach_ema_update([torch.zeros(1)], [torch.zeros(1), torch.zeros(1)], 0.9)
    with pytest.raises(RuntimeError, match="size of tensor a .2. must match the size of tensor b .3."):
        foreach_ema_update([torch.zeros(2)], [torch.zeros(3)], 0.9)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def train_step(model, optimizer, seed):
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(seed))
    model(x).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_decay_schedule():
    ema = ModelEMA(make_model(), decay=0.99, warmup_power=1.0, warmup_gamma=1.0, min_decay=0.1)
    # 1 - (1 + step) ** -1 = step / (1 + step), clamped to [0.1, 0.99]
    assert [ema.decay_at(s) for s in (0, 1, 3, 1000)] == [0.1, 0.5, 0.75, 0.99]
    assert ModelEMA(make_model(), decay=0.9).decay_at(0) == 0.9


@pytest.mark.parametrize("update_buffers", [True, False])
def test_model_ema_equals_hand_written_loop(update_buffers):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEMA(model, decay=0.9, warmup_power=2 / 3, exact=True, update_buffers=update_buffers)
    reference = copy.deepcopy(model)
    for step in range(5):
        train_step(model, optimizer, step)
        ema.update(model)
        decay = min(0.9, 1 - (1 + step) ** (-2 / 3))
        with torch.no_grad():
            for name, value in model.state_dict().items():
                target = reference.state_dict()[name]
                is_param = name in dict(model.named_parameters())
                if target.is_floating_point() and (is_param or update_buffers):
                    target.mul_(decay).add_(value, alpha=1 - decay)
                else:
                    target.copy_(value)
    assert int(ema.num_updates) == 5
    for name, value in reference.state_dict().items():
        assert torch.equal(ema.module.state_dict()[name], value), name
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_state_dict_round_trip_continues_identically():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEMA(model, decay=0.95, warmup_power=0.75)
    for step in range(3):
        train_step(model, optimizer, step)
        ema.update(model)
    state = ema.state_dict()
    assert set(state) == {"num_updates", *(f"module.{k}" for k in model.state_dict())}
    restored = ModelEMA(make_model(), decay=0.95, warmup_power=0.75)
    restored.load_state_dict(state)
    train_step(model, optimizer, 3)
    ema.update(model)
    restored.update(model)
    for (name, a), b in zip(ema.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name


def test_average_kept_in_another_dtype():
    model = make_model().to(torch.bfloat16)
    ema = ModelEMA(model, decay=0.5, dtype=torch.float32)
    first = [p.detach().float().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1)
    ema.update(model)
    for averaged, start, now in zip(ema.module.parameters(), first, model.parameters()):
        assert averaged.dtype == torch.float32
        assert torch.equal(averaged, start * 0.5 + now.float() * 0.5)
    assert ema.module[1].num_batches_tracked.dtype == torch.long


def test_set_restarts_the_average_and_forward_uses_the_average():
    model = make_model()
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    ema.set(model)
    for name, value in model.state_dict().items():
        assert torch.equal(ema.module.state_dict()[name], value)
    x = torch.randn(2, 3)
    model.eval()
    assert torch.equal(ema(x), model(x))


def test_structure_mismatch_is_rejected():
    ema = ModelEMA(make_model())
    with pytest.raises(ValueError, match="does not have the structure"):
        ema.update(nn.Linear(3, 4))
