"""Which accumulations outlive a training step, and which values beside a loss hold a graph.

A list or sum that lives for one optimizer step (gradient accumulation, the sub-networks of one
step, a batch group) frees its graphs with the step; one that lives across steps keeps every
step's graph. A value unpacked beside the backpropagated loss came out of a call that recorded
a graph, unless its name says it is for the logger.
"""

from __future__ import annotations

import textwrap

from ema_lint.engine import check_source
from ema_lint.registry import rule_for


def _findings(code: str, source: str) -> list[int]:
    result = check_source("m.py", textwrap.dedent(source).encode(), [rule_for(code)])
    return [d.start.line for d in result.diagnostics if d.code == code]


def test_a_list_reset_every_optimizer_step_is_not_reported_and_one_reset_every_epoch_is() -> None:
    source = """
    def train(model, groups, optimizer, epochs):
        for group in groups:
            outputs = []
            for batch in group:
                loss = model(batch)
                outputs.append(loss)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        for epoch in range(epochs):
            epoch_losses = []
            for batch in groups:
                loss = model(batch)
                loss.backward()
                optimizer.step()
                epoch_losses.append(loss)
    """
    assert _findings("EMA202", source) == [18]


def test_a_total_kept_within_a_method_that_steps_once_is_not_reported() -> None:
    source = """
    class Trainer:
        def train_step(self, batches):
            total = 0
            for batch in batches:
                loss = self.model(batch) / len(batches)
                loss.backward()
                total += loss
            self.d_scaler.step(self.d_opt)
            self.last_loss = float(total)

        def train_epoch(self, loader):
            total = 0
            for batch in loader:
                loss = self.model(batch)
                loss.backward()
                total += loss
            self.scheduler.step()
    """
    # a scheduler's step is not an optimizer's: the second total spans the epoch
    assert _findings("EMA202", source) == [17]


def test_the_item_of_a_value_that_may_be_a_tensor_holds_no_graph() -> None:
    source = """
    def train(model, loader, optimizer):
        total_mse = 0
        total = 0
        for batch in loader:
            losses = model(batch)
            losses["loss"].backward()
            optimizer.step()
            total_mse += losses["mse"].item() if hasattr(losses["mse"], "item") else losses["mse"]
            total += losses["mse"] if hasattr(losses["mse"], "item") else 0.0
    """
    assert _findings("EMA202", source) == [10]


def test_backward_options_are_not_backpropagated_values() -> None:
    source = """
    import torch
    import torch.nn.functional as F

    def fisher(model, loader, parameters):
        estimate = {n: torch.zeros_like(p) for n, p in parameters}
        for x, y in loader:
            output = model(x)
            with torch.no_grad():
                weights = F.softmax(output, dim=1)
            for label in range(output.shape[1]):
                model.zero_grad()
                F.cross_entropy(output, torch.tensor([label])).backward(retain_graph=label + 1 < weights.shape[1])
                for n, p in parameters:
                    estimate[n] += weights[0][label] * p.grad.detach() ** 2
    """
    assert _findings("EMA202", source) == []


def test_values_beside_the_loss_carry_its_graph_unless_named_for_the_logger() -> None:
    source = """
    import torch

    def train(model, criterion, pairs, optimizer, epochs):
        history, predictions, labels = [], [], []
        for epoch in range(epochs):
            batch = torch.from_numpy(pairs[epoch]).T
            x, label = batch[0], batch[1]
            logits, loss = model(x, label)
            total, logs = criterion(logits, loss)
            total.backward()
            optimizer.step()
            predictions.extend(logits)
            labels.append(label)
            history.append(logs)
    """
    assert _findings("EMA202", source) == [13]
    result = check_source("m.py", textwrap.dedent(source).encode(), [rule_for("EMA202")])
    # `extend` takes any iterable: detaching it is a person's call
    assert [d.fix.applicability.name for d in result.diagnostics] == ["DISPLAY_ONLY"]
