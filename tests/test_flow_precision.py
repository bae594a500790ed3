"""Where a value or module comes from is judged by what reaches the site: a value computed
under `no_grad` holds no history, and a loop's element is an element of that loop's
iterable, not of every loop that reuses the name."""

from __future__ import annotations

import textwrap

from ema_lint.engine import check_source
from ema_lint.registry import rule_for


def _findings(code: str, source: str) -> list[int]:
    result = check_source("m.py", textwrap.dedent(source).encode(), [rule_for(code)])
    return [d.start.line for d in result.diagnostics if d.code == code]


def test_state_updated_from_a_value_computed_without_gradients_is_not_reported() -> None:
    source = """
    import torch
    import torch.nn.functional as F

    class EMAHead(torch.nn.Module):
        def forward(self, feats):
            bases = self.bases.repeat(feats.size(0), 1, 1)
            with torch.no_grad():
                attention = torch.einsum("bcn,bck->bnk", feats, bases).softmax(dim=2)
                bases = F.normalize(torch.einsum("bcn,bnk->bck", feats, attention), dim=1)
            if self.training:
                bases = bases.mean(dim=0, keepdim=True)
                self.bases = (1 - self.momentum) * self.bases + self.momentum * bases
            return bases

    class Leaky(torch.nn.Module):
        def forward(self, feats):
            with torch.no_grad():
                alias = feats
            self.memory = 0.9 * self.memory + 0.1 * alias.mean(0)
            return feats
    """
    # a bare name bound under `no_grad` only aliases: `alias` is still `feats`
    assert _findings("EMA201", source) == [20]


def test_a_reused_loop_name_resolves_to_its_own_loop() -> None:
    source = """
    import torch
    from torch.utils import checkpoint

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm2d(4)

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(4)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stage1 = torch.nn.ModuleList([Conv() for _ in range(2)])
            self.stage2 = torch.nn.ModuleList([Attention() for _ in range(2)])

        def forward(self, x):
            for i, blk in enumerate(self.stage1):
                x = blk(x)
            for i, blk in enumerate(self.stage2):
                x = checkpoint.checkpoint(blk, x)
            for blk in self.stage1:
                x = checkpoint.checkpoint(blk, x)
            return x
    """
    assert _findings("EMA101", source) == [27]


def test_values_that_cannot_hold_a_graph_are_not_accumulations() -> None:
    source = """
    import os
    import torch

    def train(model, loader, optimizer, criterion):
        used, names, norms, paths, total = [], [], [], [], 0
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            for name, param in model.named_parameters():
                used.append(param)
                names.append(name)
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            paths.append(os.path.join("ckpt", "loss-{:.3f}".format(loss)))
            total += loss
    """
    assert _findings("EMA202", source) == [15]


def test_a_meter_that_sums_through_data_keeps_no_graph(tmp_path) -> None:
    from ema_lint.project import summarize

    facts = summarize(
        "meters",
        b"class Averager:\n    def add(self, v):\n        v = v.data.sum()\n        self.sum += v\n"
        b"\nclass Leaky:\n    def add(self, v):\n        self.sum += v.sum()\n",
    )
    assert {c.name: c.accumulating_arguments for c in facts.class_facts} == {
        "Averager": {},
        "Leaky": {"add": ("0", "v")},
    }


def test_an_item_taken_under_no_grad_still_aliases_its_graph() -> None:
    source = """
    import torch

    def train(model, loader, criterion):
        total = 0
        for x, y in loader:
            outputs = model(x)
            loss = criterion(outputs, y)
            loss.backward()
            with torch.no_grad():
                first = outputs[0]
                scaled = outputs * 2
            total += first
            total += scaled
    """
    assert _findings("EMA202", source) == [13]


def test_a_cut_in_the_receiver_does_not_hide_a_graph_in_the_arguments() -> None:
    from ema_lint.project import summarize

    facts = summarize("meters", b"class Meter:\n    def update(self, val):\n        self.sum += self.weight.data.mul(val)\n")
    assert facts.class_facts[0].accumulating_arguments == {"update": ("0", "val")}


def test_star_import_diamonds_resolve_in_linear_time() -> None:
    import time

    from ema_lint.project import ProjectIndex, summarize

    modules = [summarize(f"pkg.m{k}", f"from pkg.m{k + 1} import *\nfrom pkg.m{k + 2} import *\n".encode()) for k in range(40)]
    modules.append(summarize("pkg.m40", b"def compute(x):\n    return x\n"))
    index = ProjectIndex.from_facts(modules)
    started = time.perf_counter()
    assert index.resolve("pkg.m0.compute") == "pkg.m40.compute"
    assert index.resolve("pkg.m0.nothing") == "pkg.m0.nothing"
    assert time.perf_counter() - started < 1.0


def test_a_temporary_that_refers_to_itself_is_inlined_once() -> None:
    """torch/_inductor/ir.py has the shape: the loop's only binding of `scaled` reads `scaled`."""
    source = """
        import torch


        def update(model, ema_model):
            for ema_p, p in zip(ema_model.parameters(), model.parameters()):
                scaled = scaled * 0.999 + p
                ema_p.copy_(scaled)
    """
    result = check_source("update.py", textwrap.dedent(source).encode(), [rule_for("EMA301")])
    assert [d.code for d in result.diagnostics] == []


def test_only_the_returned_value_that_is_backpropagated_carries_a_graph() -> None:
    """icefall's shape: `loss, info = compute_loss(...)`, `loss.backward()`; `info` holds numbers
    taken with `.item()`, and the running total of it keeps no graph."""
    source = """
        import torch


        def compute_loss(model, batch):
            loss = model(batch).sum()
            info = {"frames": batch.size(0), "loss": loss.detach().item()}
            return loss, info


        def train(model, optimizer, loader):
            tot_loss = 0.0
            for batch in loader:
                loss, loss_info = compute_loss(model, batch)
                tot_loss = tot_loss * 0.9 + loss_info["loss"]
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    """
    assert _findings("EMA201", source) == []
    assert _findings("EMA202", source) == []


def test_an_unpacked_result_of_a_method_is_judged_by_what_the_method_returns_there() -> None:
    """Amphion's trainer: `_train_step` backpropagates nothing itself, returns the loss first
    and a dict of `.item()` numbers second; only the loss keeps a graph in the epoch loop."""
    source = """
        class Trainer:
            def _train_step(self, batch):
                train_losses = self.criterion(batch, self.model(batch))
                total_loss = train_losses["loss"]
                for key, value in train_losses.items():
                    train_losses[key] = value.item()
                return total_loss, train_losses

            def _train_epoch(self):
                epoch_sum_loss = 0.0
                epoch_losses = {}
                for batch in self.loader:
                    loss, train_losses = self._train_step(batch)
                    self.accelerator.backward(loss)
                    self.optimizer.step()
                    epoch_sum_loss += loss
                    for key, value in train_losses.items():
                        epoch_losses[key] += value
    """
    assert _findings("EMA202", source) == [17]
