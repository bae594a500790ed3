"""check_model and transform see through torch.compile, DataParallel and DDP, and never touch
the caller's wrapper, its module or its compiled code."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch._dynamo.eval_frame import OptimizedModule
from torch.utils.checkpoint import checkpoint

import ema_lint
from ema_lint.runtime.running_stats import is_converted

# a rank that dies must fail the other's collectives, not leave it waiting forever
COLLECTIVE_LIMIT = timedelta(seconds=120)

STEPS = 3


class Net(nn.Module):
    def __init__(self, checkpointed: bool = True) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        self.region = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 6), nn.BatchNorm1d(6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = checkpoint(self.region, x, use_reentrant=False) if self.checkpointed else self.region(x)
        return self.head(h)


def _train(model: nn.Module, steps: int = STEPS) -> None:
    data = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        model(torch.randn(8, 4, generator=data)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()


def _found(diagnostics) -> set[tuple[str, str]]:
    return {(d.code, d.module) for d in diagnostics}


EXPECTED = {("EMA101", "region.1"), ("EMA101", "region.4")}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("backend", ["aot_eager", "eager"])
def test_compiled_model_is_analysed_and_fixed_and_the_callers_compiled_model_is_untouched(backend):
    torch.manual_seed(0)
    net = Net()
    twin = copy.deepcopy(net)  # the same compiled model, never given to ema-lint
    caller, untouched = torch.compile(net, backend=backend), torch.compile(twin, backend=backend)
    inputs = (torch.randn(8, 4),)
    assert _found(ema_lint.check_model(caller)) == EXPECTED == _found(ema_lint.check_model(net))
    assert _found(ema_lint.check_model(caller, inputs)) == EXPECTED
    result = ema_lint.transform(caller)
    assert isinstance(result.model, OptimizedModule) and result.model is not caller
    assert result.model.dynamo_ctx is caller.dynamo_ctx
    assert not any(is_converted(m) for m in net.modules())
    assert caller._orig_mod is net and not net._forward_hooks and not net._forward_pre_hooks
    if backend == "eager":
        return  # torch's eager backend fails a backward through BatchNorm under checkpoint
    _train(caller)
    _train(untouched)
    assert all(torch.equal(a, b) for a, b in zip(_state(net).values(), _state(twin).values()))
    reference = Net(checkpointed=False)
    reference.load_state_dict(result.model._orig_mod.state_dict())
    _train(result.model)
    _train(reference)
    assert all(torch.equal(a, b) for a, b in zip(_state(result.model._orig_mod).values(), _state(reference).values()))


def test_transform_in_place_refuses_a_compiled_model():
    with pytest.raises(TypeError, match="before `torch.compile`"):
        ema_lint.transform(torch.compile(Net(), backend="aot_eager"), inplace=True)


def test_data_parallel_model_is_analysed_and_fixed_with_its_settings():
    torch.manual_seed(0)
    net = Net()
    wrapped = nn.DataParallel(net)
    assert _found(ema_lint.check_model(wrapped)) == EXPECTED
    result = ema_lint.transform(wrapped)
    assert type(result.model) is nn.DataParallel and result.model.device_ids == wrapped.device_ids
    assert result.model.module is not net and not any(is_converted(m) for m in net.modules())
    reference = Net(checkpointed=False)
    reference.load_state_dict(net.state_dict())
    _train(result.model)
    _train(reference)
    assert all(torch.equal(a, b) for a, b in zip(_state(result.model.module).values(), _state(reference).values()))
    in_place = ema_lint.transform(wrapped, inplace=True)
    assert in_place.model is wrapped and all(is_converted(net.region[i]) for i in (1, 4))


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=COLLECTIVE_LIMIT)
    try:
        torch.manual_seed(0)
        net = Net()
        wrapped = nn.parallel.DistributedDataParallel(net, broadcast_buffers=False, find_unused_parameters=True)
        found = _found(ema_lint.check_model(wrapped))
        result = ema_lint.transform(wrapped)
        kept = isinstance(result.model, nn.parallel.DistributedDataParallel) and result.model.find_unused_parameters
        untouched = not any(is_converted(m) for m in net.modules())
        # Every rank sees the same batches, so DDP's averaged gradient is the single-process one.
        _train(result.model)
        torch.save(
            {"found": found, "kept": kept, "untouched": untouched, "state": result.model.module.state_dict()},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_distributed_data_parallel_model_is_analysed_and_fixed_on_every_rank(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    reference = Net(checkpointed=False)
    _train(reference)
    for rank in range(2):
        outcome = torch.load(tmp_path / f"rank{rank}.pt")
        assert outcome["found"] == EXPECTED and outcome["kept"] and outcome["untouched"]
        assert all(torch.equal(outcome["state"][k], v) for k, v in reference.state_dict().items())
