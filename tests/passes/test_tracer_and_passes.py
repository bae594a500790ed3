"""The tracer's interceptions, the analyses and rewrites on small models, the fallback."""

from __future__ import annotations

import copy
import functools
import inspect

import pytest
import torch
import torch.utils.checkpoint
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import ema_lint
from ema_lint.passes import REGIONS_META, DetachHistoryPass, trace
from ema_lint.testing import assert_no_running_stat_hazards


class AliasedCheckpoint(nn.Module):
    """Uses the module-level alias bound by `from torch.utils.checkpoint import checkpoint`."""

    def __init__(self):
        super().__init__()
        self.inside = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.outside = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.outside(checkpoint(self.inside, x, use_reentrant=False))


class PartialCheckpoint(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.checkpoint_fn = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=True)

    def forward(self, x):
        return self.checkpoint_fn(self.block, x)


class Sequential(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.BatchNorm1d(4))

    def forward(self, x):
        return checkpoint_sequential(self.body, 2, x, use_reentrant=False)


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.BatchNorm1d(4)

    def forward(self, x):
        return checkpoint(lambda t: checkpoint(self.inner, t + 1, use_reentrant=False), x, use_reentrant=False)


class Ema(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("average", torch.zeros(4))

    def forward(self, x):
        y = self.linear(x)
        self.average.mul_(0.9).add_(y.mean(0), alpha=0.1)
        return y + self.average


class AssignedEma(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("average", torch.zeros(4))

    def forward(self, x):
        y = self.linear(x)
        with torch.no_grad():
            self.average = 0.9 * self.average + 0.1 * y.mean(0)
        return y * self.average


class Holder(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            x = x * 2
        return checkpoint(self.norm, x, use_reentrant=False)


def regions_of(model):
    traced = trace(model)
    return traced, {n.target: n.meta[REGIONS_META] for n in traced.graph.nodes if n.op == "call_module"}


def test_module_level_alias_is_intercepted_and_restored():
    traced, regions = regions_of(AliasedCheckpoint())
    assert regions == {"inside.0": (0,), "inside.1": (0,), "outside": ()}
    region = traced.regions[0]
    assert (region.entry, region.use_reentrant, region.parent) == ("torch.utils.checkpoint.checkpoint", False, None)
    assert checkpoint is torch.utils.checkpoint.checkpoint
    assert globals()["checkpoint"] is torch.utils.checkpoint.checkpoint


def test_partial_stored_on_a_module_is_intercepted_and_restored():
    model = PartialCheckpoint()
    original = model.checkpoint_fn
    traced, regions = regions_of(model)
    assert regions == {"block.0": (0,), "block.1": (0,)}
    assert traced.regions[0].use_reentrant is True
    assert model.checkpoint_fn is original


def test_checkpoint_sequential_regions_leave_the_last_segment_out():
    _, regions = regions_of(Sequential())
    assert regions == {"body.0": (0,), "body.1": (0,), "body.2": (), "body.3": ()}
    assert [d.module for d in ema_lint.check_model(Sequential())] == ["body.1"]


def test_nested_regions_keep_their_nesting():
    traced, regions = regions_of(Nested())
    assert regions == {"inner": (0, 1)}
    assert traced.regions[1].parent == 0


def class_dicts(*classes):
    return [dict(vars(cls)) for cls in classes]


def test_patches_are_restored_when_tracing_fails():
    before = class_dicts(nn.Module, Untraceable, nn.BatchNorm1d)
    with pytest.raises(Exception):
        trace(Untraceable())
    assert checkpoint is torch.utils.checkpoint.checkpoint
    assert class_dicts(nn.Module, Untraceable, nn.BatchNorm1d) == before


class CustomSetattr(nn.Module):
    """Its own `__setattr__` runs first, as it does without tracing."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("average", torch.zeros(4))
        self.seen = []

    def __setattr__(self, name, value):
        if name == "average":
            self.seen.append(name)
        super().__setattr__(name, value)

    def forward(self, x):
        y = self.linear(x)
        self.average = 0.5 * self.average + 0.5 * y.mean(0)
        return y + self.average


def test_a_class_with_its_own_setattr_is_traced_through_it_and_restored():
    before = class_dicts(nn.Module, CustomSetattr)
    model = CustomSetattr()
    traced = trace(model)
    assert model.seen == ["average"]
    assert [d.code for d in ema_lint.check_model(CustomSetattr())] == ["EMA201"]
    assert torch.equal(model.average, torch.zeros(4))  # the live buffer was not written
    assert any(n.op == "call_function" and n.target.__name__ == "store" for n in traced.graph.nodes)
    assert class_dicts(nn.Module, CustomSetattr) == before


def test_tracing_leaves_the_live_model_untouched():
    model = Holder(AssignedEma())
    state = copy.deepcopy(model.state_dict())
    trace(model)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert isinstance(model.inner.average, torch.Tensor) and not isinstance(model.inner.average, torch.fx.Proxy)


def test_traced_module_keeps_no_grad_and_assignment_semantics():
    model = Holder(AssignedEma())
    traced = trace(copy.deepcopy(model)).graph_module
    x = torch.randn(3, 4)
    assert torch.equal(traced(x), model(x))
    assert torch.equal(traced.inner.average, model.inner.average)
    assert traced.inner.average.grad_fn is None


def test_ema_with_history_found_detached_exactly_and_matches_the_audit():
    model = Holder(Ema())
    [found] = ema_lint.check_model(model)
    assert (found.code, found.module, found.message) == (
        "EMA201",
        "inner",
        "`average` of `inner` is updated from a value that carries autograd history",
    )
    truth = ema_lint.audit(copy.deepcopy(model), lambda m: m(torch.randn(3, 4)).sum().backward(), steps=2)
    assert [(d.code, d.module, d.message) for d in truth] == [
        ("EMA201", "inner", "`average` of `inner` holds autograd history after a step")
    ]
    result = ema_lint.transform(model)
    assert result.modified and type(result.model) is Holder
    assert_steps_equal_a_reference_detached_after_each_forward(result.model, model, "inner")


def assert_steps_equal_a_reference_detached_after_each_forward(fixed, original, owner, steps=3):
    """Each step of `fixed` equals `original`'s with the attribute detached by hand after the
    forward: outputs, every gradient and every buffer, bit for bit; no step keeps a graph."""
    reference = copy.deepcopy(original)
    generator = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x = torch.randn(3, 4, generator=generator)
        expected = reference(x)
        reference.get_submodule(owner).average = reference.get_submodule(owner).average.detach()
        out = fixed(x)
        assert torch.equal(out, expected)
        assert fixed.get_submodule(owner).average.grad_fn is None
        out.sum().backward()  # the second step's backward fails if history is kept
        expected.sum().backward()
        # By name: a graph module orders its parameters as its graph uses them.
        wanted = dict(reference.named_parameters())
        for name, got in fixed.named_parameters():
            want = wanted.pop(name).grad
            assert (got.grad is None and want is None) or torch.equal(got.grad, want), name
        assert not wanted
        wanted = dict(reference.named_buffers())
        for name, got in fixed.named_buffers():
            assert torch.equal(got, wanted.pop(name)), name
        assert not wanted


class CheckpointedWithEma(nn.Module):
    """A checkpointed BatchNorm block and an EMA of its output: EMA101 and EMA201 together."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.center = Ema()
        self.checkpointed = True

    def forward(self, x):
        if self.checkpointed:
            return self.center(checkpoint(self.block, x, use_reentrant=False))
        return self.center(self.block(x))


def test_transform_cuts_history_and_fixes_running_stats_in_a_checkpointed_model():
    model = CheckpointedWithEma().train()
    result = ema_lint.transform(model)
    assert [(d.code, d.module) for d in result.diagnostics] == [("EMA101", "block.1"), ("EMA201", "center")]
    assert result.modified and type(result.model) is CheckpointedWithEma
    unchecked = copy.deepcopy(model)
    unchecked.checkpointed = False
    assert_steps_equal_a_reference_detached_after_each_forward(result.model, unchecked, "center")
    assert ema_lint.audit(result.model, lambda m: m(torch.randn(3, 4)).sum().backward()) == []


def test_a_transformed_model_pickles_and_copies_with_its_hooks():
    import pickle

    fixed = ema_lint.transform(Holder(Ema())).model
    for clone in (pickle.loads(pickle.dumps(fixed)), copy.deepcopy(fixed)):
        clone(torch.randn(3, 4)).sum().backward()
        assert clone.inner.average.grad_fn is None


def test_detach_pass_reports_unmodified_when_nothing_keeps_history():
    graph_module = trace(Holder(AssignedEma())).graph_module
    assert DetachHistoryPass()(graph_module).modified is False


def test_untraceable_model_falls_back_and_keeps_the_finding():
    model = Untraceable().train()
    # The checkpoint call is read from the untraceable forward's source.
    reason, found = ema_lint.check_model(model)
    assert (reason.code, reason.severity.value) == ("EMA003", "info")
    assert reason.message.startswith("model could not be traced: TraceError: ")
    assert (found.code, found.module) == ("EMA101", "norm")
    assert found.notes[0] == f"recomputed by the checkpoint at {__file__}:{inspect.getsourcelines(Untraceable.forward)[1] + 3}"
    x = (torch.randn(3, 4),)
    state = copy.deepcopy(model.state_dict())
    assert [(d.code, d.module) for d in ema_lint.check_model(model, example_inputs=x)] == [
        ("EMA003", ""),
        ("EMA101", "norm"),
    ]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the audit ran on a copy
    result = ema_lint.transform(model, example_inputs=x)
    assert [(d.code, d.module) for d in result.diagnostics] == [("EMA003", ""), ("EMA101", "norm")]
    assert result.modified
    default = ema_lint.model.default_step(x)
    default(result.model)
    assert int(result.model.norm.num_batches_tracked) == 1


def test_assert_no_running_stat_hazards_fails_then_passes_after_transform():
    with pytest.raises(AssertionError, match="EMA101 inside.1"):
        assert_no_running_stat_hazards(AliasedCheckpoint().train(), (torch.randn(3, 4),))
    fixed = ema_lint.transform(AliasedCheckpoint().train()).model
    assert_no_running_stat_hazards(fixed, (torch.randn(3, 4),))


class SpectralDiscriminator(nn.Module):
    """spectral_norm (both APIs) inside a checkpointed block: EMA103 twice."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(
            nn.utils.spectral_norm(nn.Linear(4, 6)),
            nn.Tanh(),
            nn.utils.parametrizations.spectral_norm(nn.Linear(6, 4)),
        )
        self.head = nn.Linear(4, 1)
        self.checkpointed = True

    def forward(self, x):
        features = checkpoint(self.block, x, use_reentrant=False) if self.checkpointed else self.block(x)
        return self.head(features)


def test_transform_replays_stateful_modules_and_trains_like_the_unchecked_model():
    torch.manual_seed(0)
    model = SpectralDiscriminator().train()
    result = ema_lint.transform(model)
    assert [(d.code, d.module) for d in result.diagnostics] == [("EMA103", "block.0"), ("EMA103", "block.2")]
    assert result.modified
    unchecked = copy.deepcopy(model)
    unchecked.checkpointed = False
    untransformed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(5, 4, generator=generator)
        outputs = [m(x) for m in (result.model, unchecked, untransformed)]
        for out in outputs:
            out.sum().backward()
        assert torch.equal(outputs[0], outputs[1])
        for (name, got), want in zip(result.model.named_parameters(), unchecked.parameters(), strict=True):
            assert torch.equal(got.grad, want.grad), name
        for (name, got), want in zip(result.model.state_dict().items(), unchecked.state_dict().values(), strict=True):
            assert torch.equal(got, want), name
    # Without the fix the power iteration steps twice per step and the state drifts.
    drifted = [k for k, v in untransformed.state_dict().items() if not torch.equal(v, unchecked.state_dict()[k])]
    assert drifted
    assert ema_lint.audit(result.model, lambda m: m(torch.randn(5, 4)).sum().backward()) == []


class UntraceableWithEveryHazard(nn.Module):
    """Data-dependent control flow (fx cannot trace it) around BatchNorm, spectral_norm and a
    history-keeping average: the fallback must fix all three from the audit's findings."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.utils.spectral_norm(nn.Linear(4, 4)), nn.BatchNorm1d(4))
        self.center = Ema()
        self.checkpointed = True

    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        features = checkpoint(self.block, x, use_reentrant=False) if self.checkpointed else self.block(x)
        return self.center(features)


def test_untraceable_model_fallback_fixes_what_the_audit_finds():
    torch.manual_seed(0)
    model = UntraceableWithEveryHazard().train()
    result = ema_lint.transform(model, example_inputs=(torch.randn(3, 4),))
    assert [(d.code, d.module) for d in result.diagnostics] == [
        ("EMA003", ""),
        ("EMA103", "block.0"),
        ("EMA101", "block.1"),
        ("EMA201", "center"),
    ]
    assert result.modified
    unchecked = copy.deepcopy(model)
    unchecked.checkpointed = False
    assert_steps_equal_a_reference_detached_after_each_forward(result.model, unchecked, "center")
    assert ema_lint.audit(result.model, lambda m: m(torch.randn(3, 4)).sum().backward()) == []


class TeacherWithCenter(nn.Module):
    """A fusable teacher update (EMA301) beside a history-keeping average (EMA201)."""

    def __init__(self):
        super().__init__()
        self.student = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.center = Ema()

    @torch.no_grad()
    def update_teacher(self):
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(0.99).add_(s, alpha=0.01)

    def forward(self, x):
        self.update_teacher()
        return self.center(self.student(x)) + self.teacher(x)


def test_fused_graph_module_still_cuts_history_after_its_forward():
    model = TeacherWithCenter().train()
    assert ema_lint.transform(copy.deepcopy(model)).model.__class__ is TeacherWithCenter
    result = ema_lint.transform(model, fuse_ema_updates=True)
    assert {d.code for d in result.diagnostics} == {"EMA201", "EMA301"}
    assert isinstance(result.model, torch.fx.GraphModule)
    assert_steps_equal_a_reference_detached_after_each_forward(result.model, model, "center")


def test_the_analysis_itself_adds_no_nodes():
    """Looking at a leaf's parameters while tracing (for `requires_grad`) must not record reads."""
    traced = trace(AliasedCheckpoint())
    assert [n.target for n in traced.graph.nodes if n.op == "get_attr" and not n.users] == []
    assert [n.op for n in traced.graph.nodes].count("call_module") == 3


class StateDictTeacher(nn.Module):
    """timm `ModelEmaV2`'s loop over `state_dict()` values, run from forward."""

    def __init__(self):
        super().__init__()
        self.student = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)

    @torch.no_grad()
    def update_teacher(self):
        for ema, current in zip(self.teacher.state_dict().values(), self.student.state_dict().values()):
            if ema.dtype.is_floating_point:
                ema.copy_(ema * 0.99 + current * 0.01)
            else:
                ema.copy_(current)

    def forward(self, x):
        self.update_teacher()
        return self.student(x) + self.teacher(x)


def test_a_state_dict_loop_is_traced_without_touching_the_live_model_and_fused_exactly():
    model = StateDictTeacher().train()
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1)  # so that an update at trace time would show
    before = copy.deepcopy(model.state_dict())
    found = ema_lint.check_model(model)
    assert [(d.code, d.module, d.message) for d in found] == [
        (
            "EMA301",
            "",
            "6 tensors of `teacher` are updated toward `student` one at a time, one kernel per tensor "
            "instead of one `torch._foreach_*` call",
        )
    ]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    fused = ema_lint.transform(model, fuse_ema_updates=True).model
    assert isinstance(fused, torch.fx.GraphModule)
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        x = torch.randn(5, 4, generator=generator)
        assert torch.equal(fused(x), model(x))
        expected = model.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in fused.state_dict().items())


def test_a_module_registered_under_two_names_is_patched_once(monkeypatch):
    """`python train.py` puts the script in `sys.modules` as `__main__` and, once torch is
    imported, as `__mp_main__` too."""
    import sys
    import types

    script = types.ModuleType("twice_registered_script")
    exec(
        "import torch.nn as nn\n"
        "from torch.utils.checkpoint import checkpoint\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.bn = nn.BatchNorm1d(4)\n"
        "    def forward(self, x):\n"
        "        return checkpoint(self.bn, x, use_reentrant=False)\n",
        script.__dict__,
    )
    monkeypatch.setitem(sys.modules, "twice_registered_script", script)
    monkeypatch.setitem(sys.modules, "twice_registered_script_alias", script)
    traced = trace(script.Net())
    assert len(traced.regions) == 1
    assert script.checkpoint is torch.utils.checkpoint.checkpoint


class ChecksItsParameters(nn.Module):
    """Code that looks at its own parameters' properties in forward."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        weight = next(self.parameters())
        if weight.is_cuda or not weight.is_floating_point() or weight.dim() != 2:
            x = x * 2
        return self.linear(x) / sum(p.numel() for p in self.parameters()) * weight.size(0)


def test_parameter_properties_are_concrete_while_tracing():
    model = ChecksItsParameters()
    x = torch.randn(3, 4)
    assert torch.equal(trace(model).graph_module(x), model(x))


class ReadsItsAverageBack(nn.Module):
    """The new average is saved by the step's graph (`y * average`)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("average", torch.zeros(4))

    def forward(self, x):
        y = self.linear(x)
        self.average = 0.9 * self.average + 0.1 * y.mean(0)
        return y * self.average


class KeepsItsOutput(nn.Module):
    """The attribute is the very tensor the forward returns."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.average = torch.zeros(3, 4)

    def forward(self, x):
        y = self.linear(x)
        self.average = y
        return y


@pytest.mark.parametrize("model_class", [ReadsItsAverageBack, KeepsItsOutput])
def test_cutting_history_leaves_the_steps_own_graph_alone(model_class):
    model = Holder(model_class())
    result = ema_lint.transform(model)
    assert [d.code for d in result.diagnostics] == ["EMA201"]
    assert_steps_equal_a_reference_detached_after_each_forward(result.model, model, "inner")


class ParentWritesChildAverage(nn.Module):
    """The root's forward writes a child's buffer after calling the child."""

    def __init__(self):
        super().__init__()
        self.inner = Holder(nn.Linear(4, 4))
        self.inner.register_buffer("average", torch.zeros(4))

    def forward(self, x):
        y = self.inner(x)
        self.inner.average = 0.9 * self.inner.average + 0.1 * y.mean(0)
        return y


def test_history_is_cut_after_the_forward_that_writes_it():
    model = ParentWritesChildAverage()
    result = ema_lint.transform(model)
    assert [(d.code, d.module) for d in result.diagnostics] == [("EMA201", "inner")]
    assert_steps_equal_a_reference_detached_after_each_forward(result.model, model, "inner")


class CheckpointsItsOwnMethod(nn.Module):
    """`checkpoint(self._inner, x)`: recomputation reruns the method, not a module forward."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("average", torch.zeros(4))

    def _inner(self, x):
        self.average.mul_(0.5).add_(x.detach().mean(0))
        return self.linear(x)

    def forward(self, x):
        return checkpoint(self._inner, x, use_reentrant=False)


def test_a_write_in_a_checkpointed_method_is_reported_with_the_call_site_fix_only():
    [found] = ema_lint.check_model(CheckpointsItsOwnMethod())
    assert (found.code, found.module, found.fix.applicability.value) == ("EMA103", "", "display-only")
    assert "replay_buffers" in found.fix.title
    result = ema_lint.transform(CheckpointsItsOwnMethod())
    assert not result.modified


class SharedSpectralBlock(nn.Module):
    """One spectral_norm layer checkpointed three times a step (ALBERT-style sharing)."""

    def __init__(self):
        super().__init__()
        self.block = nn.utils.spectral_norm(nn.Linear(4, 4))

    def forward(self, x):
        for _ in range(3):
            x = checkpoint(self.block, x, use_reentrant=False)
        return x


def test_a_stateful_module_run_several_times_a_step_gets_the_call_site_fix_only():
    [found] = ema_lint.check_model(SharedSpectralBlock())
    assert (found.code, found.module, found.fix.applicability.value) == ("EMA103", "block", "display-only")
    assert not ema_lint.transform(SharedSpectralBlock()).modified


class ParentReadsChildAverage(nn.Module):
    """The child writes its average; the parent reads it after the child's forward returned."""

    def __init__(self):
        super().__init__()
        self.inner = ReadsItsAverageBack()

    def forward(self, x):
        y = self.inner(x)
        return y * self.inner.average


def test_history_is_cut_after_the_forward_that_also_encloses_later_reads():
    model = ParentReadsChildAverage()
    result = ema_lint.transform(model)
    assert [(d.code, d.module) for d in result.diagnostics] == [("EMA201", "inner")]
    assert_steps_equal_a_reference_detached_after_each_forward(result.model, model, "inner")


class SharesTheAverage(nn.Module):
    """A second module registers the writer's buffer as its own."""

    def __init__(self):
        super().__init__()
        self.inner = Ema()
        self.reader = nn.Module()
        self.reader.register_buffer("average", self.inner.average)

    def forward(self, x):
        return self.inner(x) + self.reader.average


def test_every_module_holding_the_buffer_is_cut():
    result = ema_lint.transform(SharesTheAverage())
    model = result.model
    for _ in range(3):
        model(torch.randn(3, 4)).sum().backward()  # the second step fails if history is kept
        assert model.inner.average.grad_fn is None and model.reader.average.grad_fn is None
    assert ema_lint.audit(model, lambda m: m(torch.randn(3, 4)).sum().backward()) == []


class PowerIterationUnderNoGrad(nn.Module):
    """Writes its buffer under `torch.no_grad()` inside the checkpointed function: the
    recomputation runs that block again."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("u", torch.ones(4))
        self.checkpointed = True

    def step(self, x):
        with torch.no_grad():
            self.u.mul_(0.5).add_(x.mean(0))
        return self.linear(x) * self.u.clone()

    def forward(self, x):
        return checkpoint(self.step, x, use_reentrant=False) if self.checkpointed else self.step(x)


def test_a_buffer_written_under_no_grad_inside_a_region_is_found():
    [found] = ema_lint.check_model(PowerIterationUnderNoGrad())
    assert (found.code, found.module) == ("EMA103", "")
    truth = ema_lint.audit(PowerIterationUnderNoGrad(), lambda m: m(torch.randn(3, 4)).sum().backward())
    assert [(d.code, d.module) for d in truth] == [("EMA103", "")]
