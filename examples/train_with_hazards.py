"""A small training script with one instance of each hazard ema-lint finds.

Run `ema-lint check examples/` to see them, `ema-lint fix examples/` for the fixes it would make.
"""

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.head = nn.Linear(width, 10)
        self.register_buffer("feature_mean", torch.zeros(width))

    def forward(self, x):
        x = self.stem(x)
        # Recomputed in backward: every BatchNorm in `self.blocks` updates its stats twice.
        x = checkpoint(self.blocks, x, use_reentrant=False)
        pooled = x.mean(dim=(2, 3))
        # Keeps the autograd graph of every past batch alive.
        self.feature_mean = 0.99 * self.feature_mean + 0.01 * pooled.mean(0)
        return self.head(pooled)


def train(steps: int = 3) -> None:
    model = Net()
    ema_model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    total_loss = 0.0
    for _ in range(steps):
        images, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss  # holds every step's graph
        with torch.no_grad():
            for ema_p, p in zip(ema_model.parameters(), model.parameters()):
                ema_p.mul_(0.999).add_(p, alpha=0.001)
    print(f"mean loss {total_loss / steps:.3f}")


if __name__ == "__main__":
    train()
