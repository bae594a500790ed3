"""EMA202 through a meter defined in another checked file: the graph comes from the caller,
the accumulation happens in the meter's `update`."""

from __future__ import annotations

from pathlib import Path

from ema_lint.registry import rule_for
from ema_lint.runner import SourceFile, check_files

METER = """\
class AverageMeter:
    def __init__(self, name):
        self.sum = 0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n


class MovingAverage:
    def update(self, val):
        self.avg = self.momentum * self.avg + (1 - self.momentum) * val


class FloatMeter:
    def update(self, val):
        val = float(val)
        self.sum += val
"""

TRAIN = """\
from pkg.meter import AverageMeter, FloatMeter, MovingAverage


def train(model, loader, optimizer, criterion):
    losses = AverageMeter("Loss")
    smooth = MovingAverage()
    floats = FloatMeter()
    accuracies = AverageMeter("Acc")
    for x, y in loader:
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.update(loss, x.size(0))
        smooth.update(loss)
        floats.update(loss)
        accuracies.update(loss.item(), n=x.size(0))
"""


def test_a_loss_passed_to_an_accumulating_meter_keeps_its_graph(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "meter.py").write_text(METER)
    (package / "train.py").write_text(TRAIN)
    files = [SourceFile(str(package / name), str(tmp_path)) for name in ("__init__.py", "meter.py", "train.py")]
    report = check_files(files, [rule_for("EMA202")])
    assert [(Path(d.path).name, d.start.line, d.message) for d in report.diagnostics] == [
        ("train.py", 14, "`losses` accumulates `loss` with its autograd graph, so every step's graph stays in memory"),
        ("train.py", 15, "`smooth` accumulates `loss` with its autograd graph, so every step's graph stays in memory"),
    ]
