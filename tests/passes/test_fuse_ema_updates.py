"""EMA301 in traced models (`find_ema_loop_updates`) and its bit-exact fusion (`FuseEmaUpdatesPass`)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import ema_lint
from ema_lint.passes import FuseEmaUpdatesPass, trace
from ema_lint.passes.fuse_ema_updates import foreach_lerp_, foreach_mul_add_, foreach_mul_add_product_

MESSAGE = "{n} tensors of `{ema}` are updated toward `{source}` one at a time, one kernel per tensor instead of one `torch._foreach_*` call"


def encoder() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


class MomentumEncoder(nn.Module):
    """MoCo: a key encoder that follows the query encoder, updated from forward under no_grad.
    `form` picks the loop body's spelling, each one seen in published code."""

    def __init__(self, form: str, momentum: float = 0.99) -> None:
        super().__init__()
        self.encoder_q = encoder()
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
        self.m = momentum
        self.form = form

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        for param_k, param_q in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            if self.form == "mul_add":  # mean teacher
                param_k.mul_(self.m).add_(param_q, alpha=1 - self.m)
            elif self.form == "mul_add_product":  # DINO
                param_k.data.mul_(self.m).add_((1 - self.m) * param_q.detach().data)
            elif self.form == "lerp":
                param_k.lerp_(param_q, 1 - self.m)
            elif self.form == "assign_data":  # MoCo v1-v3
                param_k.data = param_k.data * self.m + param_q.data * (1.0 - self.m)
            elif self.form == "copy":
                param_k.copy_(param_k * self.m + param_q * (1 - self.m))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.encoder_q(x)
        self._momentum_update_key_encoder()
        return q, self.encoder_k(x)


class MeanTeacher(nn.Module):
    """A teacher EMA over parameters and buffers: float buffers averaged, the integer
    `num_batches_tracked` copied (averaging a counter is meaningless, and `mul_` fails on it)."""

    def __init__(self, decay: float = 0.9) -> None:
        super().__init__()
        self.student = encoder()
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update_teacher(self) -> None:
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(self.decay).add_(s, alpha=1 - self.decay)
        for t, s in zip(self.teacher.buffers(), self.student.buffers()):
            if t.dtype.is_floating_point:
                t.mul_(self.decay).add_(s, alpha=1 - self.decay)
            else:
                t.copy_(s)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.student(x)
        self.update_teacher()
        return s, self.teacher(x)


class TwoTeachers(nn.Module):
    """Two loops with different decays: two runs, two findings, two fused calls."""

    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Linear(4, 3)
        self.fast = copy.deepcopy(self.student).requires_grad_(False)
        self.slow = copy.deepcopy(self.student).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.student(x)
        with torch.no_grad():
            for t, s in zip(self.fast.parameters(), self.student.parameters()):
                t.mul_(0.9).add_(s, alpha=0.1)
            for t, s in zip(self.slow.parameters(), self.student.parameters()):
                t.mul_(0.999).add_(s, alpha=0.001)
        return y + self.fast(x) + self.slow(x)


class PerTensorDecays(nn.Module):
    """Every tensor has its own decay: no run of two same-decay updates, so no finding."""

    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Linear(4, 3)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.decays = (0.9, 0.99)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for t, s, d in zip(self.teacher.parameters(), self.student.parameters(), self.decays):
                t.mul_(d).add_(s, alpha=1 - d)
        return self.student(x) + self.teacher(x)


class SingleTensorAverages(nn.Module):
    """DINO's output center (a buffer averaged from an activation) and one averaged parameter:
    single-tensor updates are not loops; history kept by them is EMA201's business."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.register_buffer("center", torch.zeros(3))
        self.register_buffer("weight_average", self.linear.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        with torch.no_grad():
            self.center.mul_(0.9).add_(y.mean(0), alpha=0.1)
            self.weight_average.mul_(0.9).add_(self.linear.weight, alpha=0.1)
        return y - self.center


class CheckpointedUpdate(nn.Module):
    """The momentum update inside a checkpoint region: reported, never rewritten."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = MomentumEncoder("mul_add")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return checkpoint(self.inner, x, use_reentrant=False)


def training_steps(model: nn.Module, inputs: list[torch.Tensor]) -> list[tuple]:
    """Outputs, gradients and the full state after each SGD step."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    record = []
    for x in inputs:
        outputs = model(x)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        loss = sum((o.float() - 0.5).pow(2).sum() for o in outputs)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        optimizer.zero_grad()
        state = {name: t.clone() for name, t in model.state_dict().items()}
        record.append((tuple(o.detach().clone() for o in outputs), grads, state))
    return record


def assert_bit_identical(model: nn.Module, dtype: torch.dtype = torch.float32, steps: int = 3) -> torch.fx.GraphModule:
    torch.manual_seed(0)
    model = model.to(dtype)
    reference = copy.deepcopy(model)
    assert ema_lint.transform(copy.deepcopy(model)).model.__class__ is type(model)  # fusion is opt-in
    result = ema_lint.transform(model, fuse_ema_updates=True)
    assert result.modified and isinstance(result.model, torch.fx.GraphModule)
    inputs = [torch.randn(5, 4, dtype=dtype) for _ in range(steps)]
    expected, actual = training_steps(reference, inputs), training_steps(result.model, inputs)
    for (out_e, grads_e, state_e), (out_a, grads_a, state_a) in zip(expected, actual):
        assert all(torch.equal(e, a) for e, a in zip(out_e, out_a, strict=True))
        assert grads_e.keys() == grads_a.keys() and grads_e
        assert all(torch.equal(grads_e[k], grads_a[k]) for k in grads_e)
        assert state_e.keys() == state_a.keys()
        assert all(torch.equal(state_e[k], state_a[k]) and state_e[k].dtype == state_a[k].dtype for k in state_e)
    return result.model


def fused_calls(graph_module: torch.fx.GraphModule) -> list[tuple[str, int, tuple]]:
    """(function, number of tensors, numbers) for each fused call in the graph."""
    fused = {foreach_mul_add_, foreach_mul_add_product_, foreach_lerp_}
    return [
        (node.target.__name__, len(node.args[0]), node.args[2:])
        for node in graph_module.graph.nodes
        if node.op == "call_function" and node.target in fused
    ]


def per_tensor_writes(graph_module: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in graph_module.graph.nodes if n.op == "call_method" and n.target in ("mul_", "add_", "lerp_", "copy_")]


FORMS = {
    "mul_add": ("foreach_mul_add_", (0.99, 1 - 0.99)),
    "mul_add_product": ("foreach_mul_add_product_", (0.99, 1 - 0.99)),
    "lerp": ("foreach_lerp_", (1 - 0.99,)),
    "assign_data": ("foreach_mul_add_product_", (0.99, 1.0 - 0.99)),
    "copy": ("foreach_mul_add_product_", (0.99, 1 - 0.99)),
}


@pytest.mark.parametrize("form", FORMS)
def test_momentum_encoder_loop_is_found_with_a_safe_fix(form):
    model = MomentumEncoder(form)
    state = copy.deepcopy(model.state_dict())
    [found] = ema_lint.check_model(model)
    assert (found.code, found.name, found.severity.value, found.module, found.message) == (
        "EMA301",
        "ema-update-in-python-loop",
        "info",
        "",
        MESSAGE.format(n=6, ema="encoder_k", source="encoder_q"),
    )
    assert found.fix is not None and found.fix.applicability.value == "safe"
    # The loop runs as graph nodes, not on the live tensors at trace time.
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("form", FORMS)
def test_momentum_encoder_fused_is_bit_identical_over_three_steps(form):
    fused = assert_bit_identical(MomentumEncoder(form))
    assert fused_calls(fused) == [(FORMS[form][0], 6, FORMS[form][1])]
    assert per_tensor_writes(fused) == []


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_momentum_encoder_fused_is_bit_identical_in_low_precision(form, dtype):
    assert_bit_identical(MomentumEncoder(form), dtype)


def test_teacher_with_buffers_averages_floats_and_keeps_the_counter_copy_exact():
    model = MeanTeacher()
    [found] = ema_lint.check_model(model)
    assert (found.code, found.module, found.message) == (
        "EMA301",
        "",
        MESSAGE.format(n=8, ema="teacher", source="student"),
    )
    fused = assert_bit_identical(model)
    assert fused_calls(fused) == [("foreach_mul_add_", 8, (0.9, 1 - 0.9))]
    # `num_batches_tracked` keeps its own copy_, after the fused call, as in the loop.
    assert per_tensor_writes(fused) == ["copy_"]
    assert fused.get_buffer("teacher.1.num_batches_tracked").dtype == torch.long


def test_loops_with_different_decays_are_two_groups():
    found = ema_lint.check_model(TwoTeachers())
    assert [(d.code, d.module, d.message) for d in found] == [
        ("EMA301", "", MESSAGE.format(n=2, ema="fast", source="student")),
        ("EMA301", "", MESSAGE.format(n=2, ema="slow", source="student")),
    ]
    fused = assert_bit_identical(TwoTeachers())
    assert fused_calls(fused) == [("foreach_mul_add_", 2, (0.9, 0.1)), ("foreach_mul_add_", 2, (0.999, 0.001))]


def test_a_decay_per_tensor_is_no_group():
    assert ema_lint.check_model(PerTensorDecays()) == []
    assert ema_lint.transform(PerTensorDecays(), fuse_ema_updates=True).modified is False


def test_single_tensor_averages_are_not_loops():
    assert ema_lint.check_model(SingleTensorAverages()) == []
    result = ema_lint.transform(SingleTensorAverages(), fuse_ema_updates=True)
    assert result.modified is False and not isinstance(result.model, torch.fx.GraphModule)


def test_update_inside_a_checkpoint_region_is_reported_without_a_fix_and_left_alone():
    model = CheckpointedUpdate()
    found = [d for d in ema_lint.check_model(model) if d.code == "EMA301"]
    assert [(d.module, d.message, d.fix) for d in found] == [
        ("inner", MESSAGE.format(n=6, ema="inner.encoder_k", source="inner.encoder_q"), None)
    ]
    graph_module = trace(model).graph_module
    assert FuseEmaUpdatesPass()(graph_module).modified is False


def test_update_with_grad_on_is_reported_without_a_fix():
    class GradOnUpdate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = nn.Linear(4, 3)
            self.teacher = copy.deepcopy(self.student).requires_grad_(False)

        def forward(self, x):
            for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                t.mul_(0.9).add_(s, alpha=0.1)  # records autograd history into the teacher
            return self.student(x)

    found = {d.code: d for d in ema_lint.check_model(GradOnUpdate())}
    assert found["EMA301"].fix is None
    assert FuseEmaUpdatesPass()(trace(GradOnUpdate()).graph_module).modified is False


def test_pass_leaves_graphs_without_loops_unmodified():
    graph_module = trace(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))).graph_module
    code = graph_module.code
    assert FuseEmaUpdatesPass()(graph_module).modified is False
    assert graph_module.code == code
