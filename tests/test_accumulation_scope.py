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


def test_a_cut_call_unpacked_beside_the_loss_holds_no_graph() -> None:
    source = """
    import torch

    def train(model, criterion, loader, optimizer, meter):
        sizes = []
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            stats = torch.tensor([loss.item(), x.size(0)])
            loss, batch_size = stats.tolist()
            sizes.append(batch_size)
    """
    assert _findings("EMA202", source) == []


def test_a_constructed_model_is_no_graph_for_what_is_computed_from_it() -> None:
    source = """
    import torch

    def main(args, data, evaluate):
        adjacency = data.adjacency()
        model = GCN(data.n_nodes, adjacency, args).to(args.device)
        optimizer = torch.optim.Adam(model.parameters())
        recalls, losses = [], []
        for epoch in range(args.epochs):
            batch_loss = model.loss(*data.sample())
            optimizer.zero_grad()
            batch_loss.backward()
            optimizer.step()
            scores = evaluate(model, data.test_users)
            recalls.append(scores["recall"])
            losses.append(batch_loss)
    """
    # the evaluation result is computed from the model, not from a recorded op upstream of the loss
    assert _findings("EMA202", source) == [16]


def test_state_a_per_step_hook_keeps_on_the_instance_outlives_the_step() -> None:
    source = """
    import torch
    import lightning as L
    import torch.nn.functional as F

    class Classifier(L.LightningModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
            self.training_step_outputs.append(loss)
            self.seen += x.size(0)
            self.losses_this_step = []
            self.losses_this_step.append(loss)
            self.logged.append(loss.detach())
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.validation_step_outputs.append(self.net(x))

        def on_train_epoch_end(self):
            self.log("mean", torch.stack(self.training_step_outputs).mean())
            self.training_step_outputs.clear()
    """
    # validation runs without gradients; a list re-created in every call dies with the step
    assert _findings("EMA202", source) == [11]


def test_losses_collected_to_be_backpropagated_together_are_not_reported() -> None:
    source = """
    import torch
    import torch.nn.functional as F

    def train(model, loader, opt):
        buf = []
        for i, (x, y) in enumerate(loader):
            loss = F.cross_entropy(model(x), y)
            buf.append(loss)
            if (i + 1) % 4 == 0:
                torch.stack(buf).mean().backward()
                opt.step()
                opt.zero_grad()
                buf.clear()

    class Manual(LightningModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.buf.append(loss)
            if (batch_idx + 1) % 4 == 0:
                self.manual_backward(torch.stack(self.buf).mean())
                self.buf.clear()
            return loss
    """
    assert _findings("EMA202", source) == []


def test_only_model_outputs_beside_the_loss_are_taken_to_carry_it() -> None:
    source = """
    from helpers import train_batch

    def train(model, loader, optimizer):
        total_correct, n_seen, outputs = 0, 0, []
        for x, y in loader:
            loss, correct, count, logits = train_batch(model, x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_correct += correct
            n_seen += count
            outputs.append(logits)
    """
    assert _findings("EMA202", source) == [13]


def test_a_module_instance_with_a_capitalised_name_is_called_not_constructed() -> None:
    source = """
    import torch
    import torch.nn as nn

    def train(loader, net):
        MSE = nn.MSELoss()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        outs = []
        for x, y in loader:
            out = net(x)
            loss = MSE(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            outs.append(out)
    """
    assert _findings("EMA202", source) == [15]


def test_an_optimizer_stepped_through_a_helper_or_a_list_makes_a_step_loop() -> None:
    source = """
    from utils import clip_and_step

    def train(model, loader, optimizer, optimizers, epochs):
        history = []
        for epoch in range(epochs):
            for x in loader:
                loss = model(x).sum()
                loss.backward()
                clip_and_step(optimizer)
                history.append(loss)
        optimizer.step()
        kept = []
        for epoch in range(epochs):
            for x in loader:
                loss = model(x).sum()
                loss.backward()
                optimizers[0].step()
                kept.append(loss)
        optimizers[0].step()
    """
    assert _findings("EMA202", source) == [11, 19]


def test_an_accumulator_a_module_reads_later_is_not_a_loss_being_accumulated() -> None:
    source = """
    import torch

    def train_epoch(model, loader, optimizer, weights, previous):
        distances = torch.zeros(4)
        for x, y in loader:
            prediction, transfer_loss, distance = model.boosted(x, weights)
            distances = distances + distance
            loss = (prediction - y).pow(2).mean() + transfer_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        weights = model.update_weights(weights, previous, distances)
        return weights

    def train_groups(model, loader, optimizer):
        kept = []
        for i, x in enumerate(loader):
            kept.append(model(x).sum())
            if i % 4 == 3:
                (sum(loss for loss in kept) / len(kept)).backward()
                optimizer.step()
                kept.clear()
    """
    # the module makes new weights from `distances`; `kept` is what is backpropagated
    assert _findings("EMA202", source) == [8]
    result = check_source("m.py", textwrap.dedent(source).encode(), [rule_for("EMA202")])
    # `distance` is taken for a tensor only because it comes beside the loss: an unsafe fix
    assert [d.fix.applicability.name for d in result.diagnostics] == ["UNSAFE"]


def test_locals_of_a_per_step_hook_die_with_the_step() -> None:
    source = """
    class Task:
        def train_step(self, samples, model, criterion, optimizer):
            total_size, outputs = 0, {}
            for pair in self.pairs:
                loss, sample_size, logging_output = criterion(model, samples[pair])
                optimizer.backward(loss)
                total_size += sample_size
                outputs[pair] = logging_output
            return total_size, outputs
    """
    assert _findings("EMA202", source) == []


def test_gradient_norms_metric_keys_and_fetched_batches_hold_no_graph() -> None:
    source = """
    import torch

    def train(self, model, loader, optimizer, norm_meter, clip):
        data_iter = iter(loader)
        seconds, accuracy = 0.0, 0.0
        while True:
            batch = next(data_iter)
            loss, output = model(batch)
            self.accelerator.backward(loss)
            if clip:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            else:
                grad_norm = get_grad_norm(model.parameters())
            optimizer.step()
            norm_meter.update(grad_norm)
            seconds += batch["duration"] / 3600
            accuracy += output["accuracy"]
    """
    assert _findings("EMA202", source) == []


def test_a_step_helper_handed_the_loss_and_the_optimizer_backpropagates_the_loss() -> None:
    """SLM-Lab's shape: `net.train_step(loss, optim)` runs backward and the optimizer step, and
    the mean taken after the loop (`loss = total_loss / n`) feeds no backward of the loop."""
    source = """
    import torch


    class DQN:
        def train(self):
            total_loss = torch.tensor(0.0)
            for batch in self.batches():
                loss = self.calc_q_loss(batch)
                self.net.train_step(loss, self.optim, self.lr_scheduler)
                total_loss += loss
            loss = total_loss / self.training_iter
            return loss.item()

        def train_on(self, loader):
            seen = []
            for batch in loader:
                self.net.train_step(batch, self.optim)
                seen.append(batch)
    """
    assert _findings("EMA202", source) == [11]


def test_a_step_helper_handed_several_values_is_not_taken_to_backpropagate_them() -> None:
    """`train_step(net, inputs, labels, optimizer)` computes the loss from what it is given:
    which argument is a loss is unknown, so none is taken for one."""
    source = """
    def train(net, loader, optimizer):
        all_labels = []
        for data in loader:
            inputs, labels = data
            train_step(net, inputs, labels, optimizer)
            all_labels.append(labels.cpu())
    """
    assert _findings("EMA202", source) == []


def test_a_step_helper_handed_a_data_iterator_is_not_taken_to_backpropagate_it() -> None:
    """The KGE recipes: `model.train_step(model, optimizer, train_iterator, args)` draws the
    batch from the iterator it is handed and returns a dict of numbers."""
    source = """
    def train(self, optimizer):
        train_iterator = BidirectionalOneShotIterator(self.head, self.tail)
        training_logs = []
        for step in range(self.max_steps):
            log = self.model.train_step(self.model, optimizer, train_iterator, self.args)
            training_logs.append(log)
    """
    assert _findings("EMA202", source) == []
