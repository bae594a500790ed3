"""EMA202 through a meter defined in another checked file: the graph comes from the caller,
the accumulation happens in the meter's `update`."""

from __future__ import annotations

import os
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


METRICS = """\
import torch


def accuracy(output, target, topk=(1,)):
    with torch.no_grad():
        _, pred = output.topk(max(topk), 1, True, True)
        correct = pred.t().eq(target.view(1, -1))
        return [correct[:k].reshape(-1).float().sum(0) * 100.0 for k in topk]


def count(output):
    return output.numel(), output.sum().item()


def logits(output):
    return output * 2
"""

MEASURED = """\
from pkg.meter import AverageMeter
from pkg.metrics import accuracy, count, logits


def train(model, loader, optimizer, criterion):
    top1, sizes, raw = AverageMeter("Acc@1"), AverageMeter("n"), AverageMeter("raw")
    for x, y in loader:
        output = model(x)
        loss = criterion(output, y)
        loss.backward()
        acc1, acc5 = accuracy(output, y, topk=(1, 5))
        top1.update(acc1[0], x.size(0))
        sizes.update(count(output)[1])
        raw.update(logits(output))
"""


def test_a_value_from_a_function_that_returns_no_graph_is_not_reported(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "meter.py").write_text(METER)
    (package / "metrics.py").write_text(METRICS)
    (package / "train.py").write_text(MEASURED)
    names = ("__init__.py", "meter.py", "metrics.py", "train.py")
    report = check_files([SourceFile(str(package / name), str(tmp_path)) for name in names], [rule_for("EMA202")])
    # `accuracy` returns under `no_grad`, `count` returns numbers; `logits` returns a graph
    assert [(Path(d.path).name, d.start.line) for d in report.diagnostics] == [("train.py", 14)]


OLD_STYLE_ACCURACY = """\
def accuracy(output, target, topk=(1,)):
    batch_size = target.size(0)
    _, pred = output.topk(max(topk), 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    res = []
    for k in topk:
        correct_k = correct[:k].view(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res
"""

SCRIPT = """\
from utils import *


def train(model, loader, optimizer, criterion):
    losses, top1 = AverageMeter("Loss"), AverageMeter("Acc@1")
    for x, y in loader:
        output = model(x)
        loss = criterion(output, y)
        loss.backward()
        acc1, = accuracy(output, y)
        losses.update(loss, x.size(0))
        top1.update(acc1[0], x.size(0))
"""


def test_scripts_in_different_folders_each_import_their_own_utils(tmp_path: Path) -> None:
    """`a/utils.py` and `b/utils.py` do not hide each other: each script's `from utils import *`
    means the module beside it, through a package's own star imports too."""
    for folder, meter in (("a", METER), ("b", "class AverageMeter:\n    def update(self, val, n=1):\n        pass\n")):
        (tmp_path / folder / "utils").mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
        (tmp_path / folder / "utils" / "__init__.py").write_text("from utils.meters import *\nfrom utils.metrics import *\n")
        (tmp_path / folder / "utils" / "meters.py").write_text(meter)
        (tmp_path / folder / "utils" / "metrics.py").write_text(OLD_STYLE_ACCURACY)
        (tmp_path / folder / "train.py").write_text(SCRIPT)
    from ema_lint.discovery import discover

    files, _ = discover([str(tmp_path)])
    report = check_files(files, [rule_for("EMA202")])
    # only `a`'s meter accumulates; the old-style `accuracy` returns `eq`-derived numbers
    assert [(os.path.relpath(d.path, tmp_path), d.start.line) for d in report.diagnostics] == [("a/train.py", 11)]


DICT_OF_METERS = """\
from collections import defaultdict

from pkg.meter import AverageMeter, FloatMeter


def train(model, loader, optimizer, criterion):
    metrics = defaultdict(AverageMeter)
    named = {"loss": AverageMeter(), "acc": FloatMeter()}
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()
        metrics["loss"].update(loss)
        named["loss"].update(loss)
        metrics["step"].update(loss.item())
"""


def test_meters_held_in_a_dict_are_meters_too(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "meter.py").write_text(METER)
    (package / "train.py").write_text(DICT_OF_METERS)
    files = [SourceFile(str(package / name), str(tmp_path)) for name in ("__init__.py", "meter.py", "train.py")]
    report = check_files(files, [rule_for("EMA202")])
    assert [(Path(d.path).name, d.start.line) for d in report.diagnostics] == [("train.py", 12), ("train.py", 13)]


def _check_package(root: Path, modules: dict[str, str]):
    """EMA202 over a package `pkg` of `modules` (file name -> source) under `root`."""
    package = root / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in modules.items():
        (package / name).write_text(source)
    files = [SourceFile(str(package / name), str(root)) for name in ("__init__.py", *modules)]
    return check_files(files, [rule_for("EMA202")])


HOLDERS = """\
from pkg.meter import AverageMeter, FloatMeter


class LossTracker:
    def __init__(self):
        self.total = AverageMeter("total")
        self.floats = FloatMeter()


class Trainer:
    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.meter = AverageMeter("loss")
        self.tracker = LossTracker()

    def fit(self, loader, criterion):
        for x, y in loader:
            losses = self.model.losses(x, y)
            self.optimizer.zero_grad()
            losses["total"].backward()
            self.optimizer.step()
            self.meter.update(losses["total"])
            self.tracker.total.update(losses)
            self.tracker.floats.update(losses["total"])
            self.meter.update(losses["total"].item())
"""


def test_meters_held_in_attributes_are_followed(tmp_path: Path) -> None:
    """`self.meter` and `self.tracker.total` are meters some method constructs; a mapping of
    tensors gets no `.detach()` fix (a dict has none)."""
    report = _check_package(tmp_path, {"meter.py": METER, "holders.py": HOLDERS})
    found = [(d.start.line, d.message.split("`")[1], d.fix.applicability.name) for d in report.diagnostics]
    assert found == [(22, "self.meter", "UNSAFE"), (23, "self.tracker.total", "DISPLAY_ONLY")]


CLOSURES = """\
from collections import defaultdict

import torch

from pkg.meter import AverageMeter


def train_one_epoch(model, loader, optimizer):
    metrics = defaultdict(AverageMeter)

    def model_fn(x):
        loss, sparsity = model(x)
        metrics["sparsity"].update(sparsity)
        per_call = AverageMeter("dies with the call")
        per_call.update(loss)
        return loss

    def evaluate_fn(x):
        loss, _ = model(x)
        metrics["eval"].update(loss)

    for x in loader:
        loss = model_fn(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for x in loader:
            evaluate_fn(x)
"""


def test_a_closure_feeds_the_meters_of_the_function_around_it(tmp_path: Path) -> None:
    """TinyCLIP's shape: the loss closure updates the epoch's meters, and the caller
    backpropagates what it returns, once per step of its loop."""
    report = _check_package(tmp_path, {"meter.py": METER, "closures.py": CLOSURES})
    assert [(d.start.line, d.message.split("`")[1]) for d in report.diagnostics] == [(13, 'metrics["sparsity"]')]


def test_a_script_level_dict_of_losses_gets_no_detach_fix() -> None:
    """torchvision's detection recipe at module level: `loss_dict` is a dict of tensors."""
    from ema_lint.engine import check_source

    source = (
        "history = []\n"
        "for images, targets in loader:\n"
        "    loss_dict = model(images, targets)\n"
        "    losses = sum(loss for loss in loss_dict.values())\n"
        "    optimizer.zero_grad()\n"
        "    losses.backward()\n"
        "    optimizer.step()\n"
        "    history.append(loss_dict)\n"
    )
    result = check_source("detection.py", source.encode(), [rule_for("EMA202")])
    assert [(d.start.line, d.fix.applicability.name) for d in result.diagnostics] == [(8, "DISPLAY_ONLY")]
