"""torch.compile: the running-stats hooks cause no graph break and change nothing in compiled code.

Under compilation the hooks do nothing (`is_recomputing` is False while compiling): the compiled
backward recomputes inside the graph without calling module forwards, and AOT autograd applies
buffer mutations once, from the forward graph.
"""

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ema_lint.runtime import convert_running_stats


class Net(nn.Module):
    def __init__(self, checkpointed: bool) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        self.region = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2), nn.Flatten())

    def forward(self, x):
        h = checkpoint(self.region, x, use_reentrant=False) if self.checkpointed else self.region(x)
        return self.head(h)


def build(checkpointed: bool, converted: bool) -> Net:
    torch.manual_seed(0)
    model = Net(checkpointed)
    return convert_running_stats(model) if converted else model


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_converted_model_compiles_without_graph_breaks(backend):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(build(checkpointed=False, converted=True))(torch.randn(2, 3, 5, 5))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
    model = build(checkpointed=False, converted=True)
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # raises on any graph break
    compiled(torch.randn(2, 3, 5, 5, requires_grad=True)).sum().backward()
    assert model.region[1].num_batches_tracked.item() == 1


def test_compiled_checkpointed_converted_model_equals_compiled_unconverted():
    trained = []
    for converted in (False, True):
        torch._dynamo.reset()
        model = build(checkpointed=True, converted=converted)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        data = torch.Generator().manual_seed(1)
        outputs, grads = [], []
        for _ in range(3):
            out = compiled(torch.randn(2, 3, 5, 5, generator=data, requires_grad=True))
            out.sum().backward()
            outputs.append(out.detach())
            grads.append([p.grad.clone() for p in model.parameters()])
        trained.append((model, outputs, grads))
    (plain, plain_out, plain_grads), (fixed, fixed_out, fixed_grads) = trained
    assert all(torch.equal(a, b) for a, b in zip(plain_out, fixed_out, strict=True))
    for a, b in zip(plain_grads, fixed_grads, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    plain_state, fixed_state = plain.state_dict(), fixed.state_dict()
    assert all(torch.equal(plain_state[k], fixed_state[k]) for k in plain_state)
    assert fixed.region[1].num_batches_tracked.item() == 3
