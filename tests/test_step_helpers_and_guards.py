"""Shapes first met in projects the rules had never seen (the ninth corpus round): state a
training step's helper keeps on `self`, records kept as dicts, values NumPy has already
checked, modules a requires-grad helper freezes, evaluation metrics returned beside the loss,
and model-EMA loops written through a dict that is loaded afterwards."""

from __future__ import annotations

import textwrap

from ema_lint.engine import check_source
from ema_lint.registry import rule_for


def _findings(code: str, source: str) -> list[int]:
    result = check_source("m.py", textwrap.dedent(source).encode(), [rule_for(code)])
    return [d.start.line for d in result.diagnostics if d.code == code]


def test_state_kept_by_a_helper_of_the_training_step_is_reported() -> None:
    source = """
    from collections import deque

    class Experiment:
        def __init__(self, model):
            self._model = model
            self._history = deque(maxlen=100)

        def loss_fn(self, batch):
            out = self._model(batch)
            loss = out.sum()
            self._history.append({"out": out, "step": self.step})
            return loss

        def update_fn(self, batch):
            self._optimizer.zero_grad()
            loss = self.loss_fn(batch)
            loss.backward()
            self._optimizer.step()
    """
    assert _findings("EMA202", source) == [12]


def test_a_helper_whose_records_are_numbers_or_metrics_is_not_reported() -> None:
    source = """
    class Experiment:
        def loss_fn(self, batch):
            out = self._model(batch)
            loss = out.sum()
            self._history.append({"out": out.detach(), "accuracy": (out.argmax(1) == batch.y).float().mean()})
            self._seen.append(batch.size(0))
            return loss

        def update_fn(self, batch):
            loss = self.loss_fn(batch)
            loss.backward()
            self._optimizer.step()
    """
    assert _findings("EMA202", source) == []


def test_a_value_numpy_has_checked_holds_no_graph() -> None:
    source = """
    import numpy as np

    def train(model, loader, optimizer, meters):
        for batch in loader:
            loss, logs = model(batch)
            loss.backward()
            optimizer.step()
            for k, v in logs.items():
                if not np.isnan(v):
                    meters[k].update(v)
    """
    assert _findings("EMA202", source) == []


def test_math_isnan_proves_nothing() -> None:
    source = """
    import math

    def train(model, loader, optimizer):
        total = 0.0
        for batch in loader:
            loss = model(batch)
            loss.backward()
            optimizer.step()
            if not math.isnan(loss):
                total += loss
    """
    assert _findings("EMA202", source) == [11]


def test_a_module_a_helper_freezes_gives_no_graph_to_its_average() -> None:
    source = """
    def toggle_grad(model, requires_grad):
        for p in model.parameters():
            p.requires_grad_(requires_grad)

    def update_average(model_tgt, model_src, beta):
        toggle_grad(model_src, False)
        toggle_grad(model_tgt, False)
        param_dict_src = dict(model_src.named_parameters())
        for p_name, p_tgt in model_tgt.named_parameters():
            p_src = param_dict_src[p_name]
            p_tgt.copy_(beta * p_tgt + (1.0 - beta) * p_src)
    """
    assert _findings("EMA201", source) == []


def test_a_module_the_file_toggles_back_on_is_not_frozen() -> None:
    source = """
    def train_step(generator, discriminator, g_opt, d_opt, z, x, meter):
        set_requires_grad(discriminator, False)
        g_loss = -discriminator(generator(z)).mean()
        g_loss.backward()
        g_opt.step()
        set_requires_grad(discriminator, True)
        d_out = discriminator(x)
        d_loss = d_out.mean()
        d_loss.backward()
        d_opt.step()
        return d_out

    def train(generator, discriminator, g_opt, d_opt, loader):
        outputs = []
        for z, x in loader:
            d_out = train_step(generator, discriminator, g_opt, d_opt, z, x, None)
            outputs.append(d_out)
    """
    assert _findings("EMA202", source) == [18]


def test_an_evaluation_metric_beside_the_loss_is_a_number() -> None:
    source = """
    def train(model, loader, optimizer, vis):
        for step, batch in enumerate(loader):
            embeds = model(batch)
            loss, eer = model.loss(embeds)
            loss.backward()
            optimizer.step()
            vis.update(loss.item(), eer, step)
            vis.total += eer
    """
    assert _findings("EMA202", source) == []


def test_model_ema_loops_in_more_spellings() -> None:
    source = """
    def mean_teacher(net, net_ema, alpha):
        for ema_param, param in zip(net_ema.parameters(), net.parameters()):
            ema_param.data.mul_(alpha).add(param.data, alpha=1.0 - alpha)

    def state_dict_items(self, pl_module):
        self.current = deepcopy(pl_module.state_dict())
        for k, v in self.current.items():
            self.current[k].copy_(self.alpha * v + (1.0 - self.alpha) * self.last[k])

    def through_a_new_dict(model, ema_model, alpha):
        model_state = model.state_dict()
        ema_state = ema_model.state_dict()
        new_dict = {}
        for key in model_state:
            new_dict[key] = alpha * ema_state[key] + (1 - alpha) * model_state[key]
        ema_model.load_state_dict(new_dict)

    def through_an_interp_helper(self, states_orig, states_ema, ema_net):
        for k, v in states_orig.items():
            states_ema[k] = self.interp_func(v, states_ema[k], trainable=v.requires_grad).detach()
        ema_net.load_state_dict(states_ema)
    """
    assert _findings("EMA301", source) == [3, 8, 15, 20]


def test_a_new_dict_that_is_not_loaded_is_no_model_average() -> None:
    source = """
    def mix(features, other, alpha):
        mixed = {}
        for key in features:
            mixed[key] = alpha * features[key] + (1 - alpha) * other[key]
        return mixed
    """
    assert _findings("EMA301", source) == []


def test_slots_of_a_container_the_caller_keeps_across_steps_are_reported() -> None:
    """dlwpt's `computeBatchLoss`: each batch writes its slice of a metrics tensor the epoch
    loop made, which links every batch's graph; a detached store or one under no_grad is fine."""
    source = """
    import torch

    class App:
        def do_training(self, train_dl):
            metrics = torch.zeros(3, len(train_dl.dataset))
            for batch_ndx, batch in enumerate(train_dl):
                loss = self.compute_batch_loss(batch_ndx, batch, train_dl.batch_size, metrics)
                loss.backward()
                self.optimizer.step()

        def compute_batch_loss(self, batch_ndx, batch, batch_size, metrics_g):
            x, y = batch
            logits = self.model(x)
            loss_g = self.loss_func(logits, y)
            start = batch_ndx * batch_size
            metrics_g[0, start:start + y.size(0)] = loss_g
            metrics_g[1, start:start + y.size(0)] = loss_g.detach()
            metrics_g[2, 0] = loss_g.mean()
            return loss_g.mean()
    """
    assert _findings("EMA202", source) == [17]


def test_lengths_beside_the_scores_are_integers() -> None:
    source = """
    def train(decoder, loader, criterion, optimizer, losses):
        for imgs, caps, caplens in loader:
            scores, caps_sorted, decode_lengths = decoder(imgs, caps, caplens)
            targets = pack_padded_sequence(caps_sorted, decode_lengths, batch_first=True).data
            loss = criterion(pack_padded_sequence(scores, decode_lengths, batch_first=True).data, targets)
            loss.backward()
            optimizer.step()
            losses.update(loss.item(), sum(decode_lengths))
    """
    assert _findings("EMA202", source) == []


def test_a_loop_over_networks_within_one_step_is_not_a_step_loop() -> None:
    """AttnGAN: `errD_total` sums one loss per discriminator, each stepping its own optimizer,
    and is reset every iteration; summed across the iterations it would be reported."""
    source = """
    def train(netG, netsD, optimizersD, loader):
        history = 0
        for data in loader:
            fake = netG(data)
            errD_total = 0
            for i in range(len(netsD)):
                errD = netsD[i](fake).mean()
                errD.backward()
                optimizersD[i].step()
                errD_total += errD
                history += errD
    """
    assert _findings("EMA202", source) == [12]


def test_helpers_named_for_arrays_or_numbers_return_no_graph() -> None:
    source = """
    def train(model, loader, opt, du):
        logs = []
        for x in loader:
            out = model(x)
            loss = out.sum()
            loss.backward()
            opt.step()
            logs.append(du.move_to_np(out))
            logs.append(tensors_to_scalars(out))
            logs.append(out)
        return logs
    """
    assert _findings("EMA202", source) == [11]
