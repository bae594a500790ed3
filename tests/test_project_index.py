"""The project index: class facts from stdlib `ast` and the running-stat closure across modules."""

from __future__ import annotations

import pickle
from pathlib import Path
from textwrap import dedent

from ema_lint.project import BUILT, Held, ProjectIndex, summarize


def _index(**modules: str) -> ProjectIndex:
    return ProjectIndex.from_facts(
        [summarize(name.replace("__", "."), dedent(code).encode()) for name, code in modules.items()]
    )


BLOCKS = """
    import torch.nn as nn
    from functools import partial

    class Bottleneck(nn.Module):
        def __init__(self, dim, norm_layer=partial(nn.BatchNorm2d, eps=1e-3)):
            super().__init__()
            self.conv = nn.Conv2d(dim, dim, 1)
            self.bn1 = norm_layer(dim)

    class Untracked(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.bn = nn.BatchNorm2d(dim, track_running_stats=False)
"""

MODEL = """
    import torch.nn as nn
    from pkg.blocks import Bottleneck, Untracked

    class Stage(nn.Sequential):
        def __init__(self, depth):
            super().__init__(*[Bottleneck(8) for _ in range(depth)])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            stages = []
            for depth in (1, 2):
                stages.append(Stage(depth))
            self.stages = nn.ModuleList(stages)
            self.plain = Untracked(8)
"""


def test_attribute_values_resolve_parameter_defaults_and_partial() -> None:
    facts = summarize("pkg.blocks", dedent(BLOCKS).encode())
    bottleneck = facts.class_facts[0]
    assert bottleneck.attributes["bn1"] == (Held(BUILT, "torch.nn.BatchNorm2d"),)
    assert facts.class_facts[1].attributes["bn"] == (Held(BUILT, "torch.nn.BatchNorm2d", False),)


def test_running_stat_closure_across_modules() -> None:
    index = _index(pkg__blocks=BLOCKS, pkg__model=MODEL)
    assert index.running_stat_path("pkg.model.Net") == ("Net.stages", "Bottleneck.bn1")
    assert index.member_path("pkg.model.Net", "stages") == ("Net.stages", "Bottleneck.bn1")
    assert index.member_path("pkg.model.Net", "plain") is None
    assert index.running_stat_path("pkg.blocks.Untracked") is None


def test_reexports_resolve_and_index_pickles() -> None:
    # `pkg/__init__.py` is summarized as package `pkg` by the runner; here by name
    index = ProjectIndex.from_facts(
        [
            summarize("pkg", b"from .utils import ckpt\n", is_package=True),
            summarize("pkg.utils", b"from torch.utils.checkpoint import checkpoint as ckpt\n"),
        ]
    )
    assert index.resolve("pkg.ckpt") == "torch.utils.checkpoint.checkpoint"
    assert pickle.loads(pickle.dumps(index)).resolve("pkg.ckpt") == "torch.utils.checkpoint.checkpoint"


def test_buffer_update_in_forward_and_frozen_parts() -> None:
    facts = summarize(
        "m",
        dedent(
            """
            import torch, torch.nn as nn

            class Tracker(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.register_buffer("avg", torch.zeros(3))
                    self.backbone = nn.Sequential(nn.BatchNorm1d(3))
                    self.backbone.eval()
                    self.backbone.requires_grad_(False)

                def forward(self, x):
                    self._update(x)
                    return self.backbone(x)

                def _update(self, x):
                    self.avg.lerp_(x.mean(0), 0.1)
            """
        ).encode(),
    )
    tracker = facts.class_facts[0]
    assert tracker.updated_buffers == ("avg",)
    assert tracker.frozen_attributes == ("backbone",)


WRAPPERS = """
    import torch.nn as nn
    from timm.layers import get_norm_act_layer

    class Residual(nn.Module):
        def __init__(self, fn, scale=1.0):
            super().__init__()
            self.fn = fn
            self.scale = scale

    class Probe(nn.Module):
        def __init__(self, reference):
            super().__init__()
            self.width = reference.out_channels

    class ConvNormAct(nn.Module):
        def __init__(self, chs, norm_layer="batchnorm"):
            super().__init__()
            self.bn = get_norm_act_layer(norm_layer)(chs)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.kept = Residual(nn.BatchNorm2d(8))
            self.read = Probe(nn.BatchNorm2d(8))
            self.named = ConvNormAct(8)
"""


def test_modules_passed_to_constructors_and_norm_factories() -> None:
    facts = summarize("m", dedent(WRAPPERS).encode())
    assert [c.stored_parameters for c in facts.class_facts[:2]] == [("fn", "scale", "0", "1"), ()]
    index = ProjectIndex.from_facts([facts])
    assert index.member_path("m.Wrapped", "kept") == ("Wrapped.kept",)
    assert index.member_path("m.Wrapped", "read") is None
    assert index.member_path("m.Wrapped", "named") == ("Wrapped.named", "ConvNormAct.bn")


def test_children_added_under_computed_names() -> None:
    index = _index(
        m="""
        import torch.nn as nn
        from m.blocks import *

        class Net(nn.Module):
            def __init__(self, head):
                super().__init__()
                self.head = head
                for i in range(2):
                    self.add_module(f"layer{i}", nn.Sequential(Block()))
        """,
        m__blocks="""
        import torch.nn as nn

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.bn = nn.BatchNorm2d(8)
        """,
    )
    assert index.member_path("m.Net", "layer0") == ("Net.layer0", "Block.bn")
    assert index.member_path("m.Net", "head") is None


def test_facts_extracted_on_demand_match_facts_extracted_up_front() -> None:
    modules = {"pkg.blocks": dedent(BLOCKS).encode(), "pkg.model": dedent(MODEL).encode()}
    lazy = ProjectIndex.from_facts(
        [summarize(name, source, structure=False) for name, source in modules.items()],
        {name: (source, False) for name, source in modules.items()},
    )
    assert [f.class_facts for f in lazy.modules.values()] == [(), ()]
    lazy.start_recording()
    assert lazy.running_stat_path("pkg.model.Net") == ("Net.stages", "Bottleneck.bn1")
    assert lazy.consulted_modules() == ["pkg.blocks", "pkg.model"]
    eager = _index(pkg__blocks=BLOCKS, pkg__model=MODEL)
    assert lazy.class_facts("pkg.blocks.Bottleneck") == eager.class_facts("pkg.blocks.Bottleneck")
    assert pickle.loads(pickle.dumps(lazy)).running_stat_path("pkg.model.Net") == ("Net.stages", "Bottleneck.bn1")


def test_read_names_are_recorded_where_a_checkpoint_call_can_be() -> None:
    source = b"import torch.utils.checkpoint as cp\nfrom .ops import ckpt\n\ny = cp.checkpoint(f, x)\nz = ckpt(g, x)\n"
    facts = summarize("pkg.net", source, structure=False)
    assert facts.read_names == (
        "f", "g", "pkg.ops.ckpt", "torch.utils.checkpoint", "torch.utils.checkpoint.checkpoint", "x"
    )
    assert summarize("pkg.net", b"y = f(x)\n").read_names == ()


STEPS = {
    "d * avg + (1 - d) * x": True,
    "avg + w * (x - avg)": True,
    "avg - w * (avg - x)": True,
    "avg.mul(d) + x": True,
    "torch.lerp(avg, x, w)": True,
    "x if avg is None else avg.lerp(x, w)": True,
    "avg + x": False,
    "avg - x * w": True,
    "avg * w - x": False,
}


def test_step_shapes_need_a_product_or_lerp() -> None:
    for value, expected in STEPS.items():
        source = f"self.avg = {value.replace('avg', 'self.avg')}\n".encode()
        assert summarize("m", source).may_hold_recurrence is expected, value


def test_in_place_and_augmented_steps() -> None:
    shapes = {
        "avg += w * (x - avg)": True,
        "avg += x": False,
        "avg *= d\n    avg += (1 - d) * x": True,
        "avg.add_(w * (x - avg))": True,
        "avg.sub_(w * (avg - x))": True,
        "avg.add_(x)": False,
        "avg.mul_(d).add_(x)": True,
        "avg.copy_(d * avg + x)": True,
        "avg.lerp_(x, w)": True,
    }
    for statement, expected in shapes.items():
        source = f"for avg, x in pairs:\n    {statement}\n".encode()
        assert summarize("m", source).may_hold_recurrence is expected, statement


def test_every_documented_ema_step_passes_the_step_pre_filter() -> None:
    """The pre-filter must keep every file a recurrence rule reports on: here, every
    INVALID example of those rules."""
    from ema_lint.registry import SOURCE_RULES
    from ema_lint.rules._autograd import RecurrenceRule

    rules = [rule for rule in SOURCE_RULES if issubclass(rule, RecurrenceRule)]
    assert rules
    for rule in rules:
        for example in rule.INVALID:
            assert summarize("example", example.source.encode()).may_hold_recurrence, (rule.code, example.source)


def test_momentum_correction_shapes() -> None:
    shapes = {
        "1 - math.sqrt(1 - m)": True,
        "1 - (1 - m) ** 0.5": True,
        "1 - pow(1 - m, 0.5)": True,
        "1 - np.power(d, 0.5)": True,
        "1 - torch.exp(x)": False,
        "d ** -0.5": False,
        "2 - math.sqrt(d)": False,
    }
    for value, expected in shapes.items():
        assert summarize("m", f"y = {value}\n".encode()).may_hold_momentum_correction is expected, value


def test_every_documented_momentum_correction_passes_its_pre_filter() -> None:
    from ema_lint.registry import rule_for

    for example in rule_for("EMA102").INVALID:
        assert summarize("example", example.source.encode()).may_hold_momentum_correction, example.source


def test_every_model_ema_loop_passes_its_pre_filter() -> None:
    """EMA301's pre-filter must never drop a finding: every documented example and every
    fixture file with a finding passes it, and files with no loop write do not."""
    from ema_lint.registry import rule_for

    for example in rule_for("EMA301").INVALID:
        assert summarize("example", example.source.encode()).may_hold_loop_update, example.source
    fixtures = Path(__file__).resolve().parent.parent / "fixtures" / "EMA301"
    for case in fixtures.glob("*.py"):
        if case.name.endswith(".fixed.py"):
            continue
        expected = case.with_suffix(".expected.txt").read_text()
        if expected.strip():
            assert summarize("fixture", case.read_bytes()).may_hold_loop_update, case.name
    assert not summarize("m", b"for i in range(3):\n    total += 1\n    x.relu_()\n").may_hold_loop_update


def test_a_registry_key_bound_through_itself_is_unknown_not_endless() -> None:
    """trl's trainer binds a name through a list it fills from the name itself (`indices.append(i)`,
    then `for i in indices`): reading the keys a registry lookup can use must end."""
    source = dedent(
        """
        import torch.nn as nn
        NORMS = {"bn": nn.BatchNorm2d}

        class Block(nn.Module):
            def __init__(self, flags):
                super().__init__()
                indices = []
                for i, flag in enumerate(flags):
                    if flag:
                        indices.append(i)
                for i in indices:
                    self.norm = NORMS[i](4)

            def forward(self, x):
                return self.norm(x)
        """
    ).encode()
    facts = summarize("m", source)
    assert [c.name for c in facts.class_facts] == ["Block"]
