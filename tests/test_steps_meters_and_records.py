"""Shapes first met in federated-learning, DeepSpeed, graph and video training code: a step
method that keeps its meter on `self`, library meters, records whose loss is cut before they
are kept, modules handed around like values, and model-EMA loops over lists a class keeps."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import pytest

from ema_lint.registry import rule_for
from ema_lint.runner import SourceFile, check_files


def _lines(code: str, source: str) -> list[int]:
    """The lines of `code`'s findings, checked as the command line does (imports resolved)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.py"
        path.write_text(textwrap.dedent(source))
        report = check_files([SourceFile(str(path), folder)], [rule_for(code)])
    return [d.start.line for d in report.diagnostics if d.code == code]


def test_a_step_method_keeps_what_it_accumulates_on_self() -> None:
    source = """
    import torch

    class Client:
        def __init__(self):
            self.losses = []
            self.total = 0

        def train_local(self, x, y):
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            self.losses.append(loss)
            self.total += loss

        def train_resetting(self, x, y):
            self.batch_losses = []
            loss = self.criterion(self.model(x), y)
            loss.backward()
            self.batch_losses.append(loss)

        def train_detached(self, x, y):
            loss = self.criterion(self.model(x), y)
            loss.backward()
            self.losses.append(loss.item())
    """
    assert _lines("EMA202", source) == [14, 15]


@pytest.mark.parametrize(
    ("imports", "build", "call"),
    [
        ("from timm.utils import AverageMeter", "AverageMeter()", "meter.update(loss, x.size(0))"),
        ("import timm.utils", "timm.utils.AverageMeter()", "meter.update(val=loss)"),
        ("from torchnet import meter as tnt", "tnt.AverageValueMeter()", "meter.add(loss)"),
        ("from fvcore.common.history_buffer import HistoryBuffer", "HistoryBuffer()", "meter.update(loss)"),
    ],
)
def test_library_meters_that_keep_their_values(imports: str, build: str, call: str) -> None:
    source = f"""
    import torch
    {imports}

    def train(model, loader, optimizer):
        meter = {build}
        for x, y in loader:
            loss = model(x).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            {call}
            {call.replace("loss", "loss.item()")}
    """
    assert _lines("EMA202", source) == [12]


def test_indices_from_a_max_hold_no_history_but_its_values_do() -> None:
    source = """
    import torch

    def train(model, loader, optimizer):
        predictions, maxima = [], []
        for x, y in loader:
            out = model(x)
            loss = out.sum()
            _, preds = torch.max(out, 1)
            values, _ = out.max(1)
            predictions.append(preds)
            maxima.append(values)
            loss.backward()
            optimizer.step()
    """
    assert _lines("EMA202", source) == [12]


def test_a_record_whose_loss_is_cut_before_it_is_kept() -> None:
    source = """
    def train(module, loader, optimizer):
        outputs, raw = [], []
        for i, batch in enumerate(loader):
            output = module.training_step(batch, i)
            output["loss"].backward()
            optimizer.step()
            raw.append(output)
            output["loss"] = output["loss"].detach()
            outputs.append(output)
    """
    assert _lines("EMA202", source) == [8]


def test_an_engine_that_runs_backward_and_the_modules_handed_to_a_step_are_not_tensors() -> None:
    source = """
    import deepspeed

    def train(model, loader, args):
        consumed = 0
        for batch in loader:
            loss = model(**batch).loss
            model.backward(loss)
            model.step()
            length = model.random_ltd_scheduler.get_current_seq()
            consumed += length * args.batch_size

    def main(args):
        model, optimizer, _, scheduler = deepspeed.initialize(model=build(args), args=args)
        train(model, loader(args), args)
        losses = 0
        for batch in loader(args):
            loss = model(**batch).loss
            model.backward(loss)
            model.step()
            losses += loss
    """
    assert _lines("EMA202", source) == [21]


def test_settings_read_into_the_loss_are_not_upstream_of_a_graph() -> None:
    source = """
    def main():
        parser = get_argument_parser()
        args = parser.parse_args()
        ema_loss, ema_kept = 0.0, 0.0
        for batch in loader:
            loss = model(*batch)
            loss = loss / args.gradient_accumulation_steps
            loss.backward()
            optimizer.step()
            ema_loss = args.alpha * ema_loss + (1 - args.alpha) * loss.item()
            ema_kept = args.alpha * ema_kept + (1 - args.alpha) * loss
    """
    assert _lines("EMA201", source) == [12]


def test_an_ema_term_rebound_to_a_number_before_the_update() -> None:
    source = """
    import torch

    class Baseline(torch.nn.Module):
        def forward(self, rewards):
            new_mean = torch.mean(rewards)
            if self.moving_mean is None:
                self.moving_mean = new_mean.detach().item()
            else:
                new_mean = new_mean.cpu().detach().item()
                self.moving_mean = 0.9 * self.moving_mean + 0.1 * new_mean
            self.kept = 0.9 * self.kept + 0.1 * torch.mean(rewards)
            return rewards - self.moving_mean
    """
    assert _lines("EMA201", source) == [12]


def test_short_accuracy_names_beside_the_loss_are_numbers_for_a_logger() -> None:
    source = """
    def train(vae, loader, optimizer):
        word_acc, kl_total = 0, 0
        for batch in loader:
            loss, kl_div, wacc, tacc = vae(batch)
            loss.backward()
            optimizer.step()
            word_acc += wacc
            kl_total += kl_div
    """
    assert _lines("EMA202", source) == [9]


def test_model_ema_loops_over_lists_the_class_keeps() -> None:
    source = """
    import torch

    class WeightEMA:
        def __init__(self, target_net, source_net, alpha=0.999):
            self.target_params = list(target_net.state_dict().values())
            self.source_params = list(source_net.state_dict().values())
            self.copies = [p.detach().clone() for p in source_net.parameters()]
            self.names = ["a", "b"]

        def step(self):
            for tgt_p, src_p in zip(self.target_params, self.source_params):
                tgt_p.mul_(self.alpha)
                tgt_p.add_(src_p * (1.0 - self.alpha))
            for copy, src_p in zip(self.copies, self.source_params):
                copy.mul_(self.alpha).add_(src_p, alpha=1.0 - self.alpha)
            for name, src_p in zip(self.names, self.source_params):
                name.mul_(self.alpha)
    """
    assert _lines("EMA301", source) == [12, 15]


def test_an_accumulator_reset_where_the_optimizer_steps_lives_one_step() -> None:
    source = """
    def train(model, loader, optimizer, accumulation_steps, log_interval):
        window, running = 0, 0
        for i, (x, y) in enumerate(loader):
            loss = model(x, y) / accumulation_steps
            loss.backward()
            window += loss
            running += loss
            if i % accumulation_steps == 0:
                optimizer.step()
                window = 0
                optimizer.zero_grad()
            if i % log_interval == 0:
                print(running / log_interval)
                running = 0
    """
    assert _lines("EMA202", source) == [8]


def test_autograd_grad_backpropagates_its_outputs_like_backward() -> None:
    source = """
    import torch

    class Client:
        def train(self, x, y):
            loss = self.criterion(self.model(x), y)
            grads = torch.autograd.grad(loss, self.model.parameters())
            for p, g in zip(self.model_x.parameters(), grads):
                p.data.add_(g, alpha=-self.lr)
            self.losses.append(loss)

        def penalty(self, real):
            scores = self.critic(real)
            grads = torch.autograd.grad(outputs=scores.sum(), inputs=real)[0]
            self.norms.append(grads.norm())
            return grads
    """
    assert _lines("EMA202", source) == [10]


def test_a_method_on_a_computed_value_carries_that_value_s_graph() -> None:
    source = """
    import torch
    from torch import nn

    def train(model, loader, optimizer):
        per_variable = torch.zeros(4)
        for x, y in loader:
            criterion = nn.MSELoss(reduction="none")
            out = model(x)
            loss_per_var = criterion(out, y).mean(dim=0)
            total = loss_per_var.mean()
            total.backward()
            optimizer.step()
            per_variable += loss_per_var
    """
    assert _lines("EMA202", source) == [14]
