"""Two gloo processes train a checkpointed DDP model with the fix: running statistics equal the
un-checkpointed single-process reference and each other, bit for bit."""

from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from ema_lint.runtime import convert_running_stats

# a rank that dies must fail the other's collectives, not leave it waiting forever
COLLECTIVE_LIMIT = timedelta(seconds=120)

WORLD_SIZE = 2
STEPS = 3


class Net(nn.Module):
    def __init__(self, checkpointed: bool) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        self.region = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 6), nn.BatchNorm1d(6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = checkpoint(self.region, x, use_reentrant=False) if self.checkpointed else self.region(x)
        return self.head(h)


def train(model: nn.Module, forward) -> None:
    # Every rank sees the same batches, so DDP's averaged gradient (g/2 + g/2) equals the
    # single-process gradient exactly and the runs are comparable bit for bit.
    data = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(STEPS):
        forward(torch.randn(8, 4, generator=data)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=COLLECTIVE_LIMIT)
    try:
        torch.manual_seed(0)
        model = convert_running_stats(Net(checkpointed=True))
        # broadcast_buffers=False: each rank's statistics come from its own forwards only.
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        train(model, ddp)
        torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_checkpointed_ddp_statistics_equal_the_single_process_reference(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    torch.manual_seed(0)
    reference = Net(checkpointed=False)
    train(reference, reference)
    expected = reference.state_dict()
    for rank in range(WORLD_SIZE):
        state = torch.load(tmp_path / f"rank{rank}.pt")
        assert state.keys() == expected.keys()
        for key in expected:
            assert torch.equal(state[key], expected[key]), (rank, key)
    assert expected["region.1.num_batches_tracked"].item() == STEPS
