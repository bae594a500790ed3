"""Model findings point at the user's code: where the module is built, and the checkpoint call
that recomputes it; torch's own location is only a note."""

from __future__ import annotations

import inspect

from torch import nn
from torch.utils.checkpoint import checkpoint

import ema_lint


class Block(nn.Module):
    def __init__(this) -> None:  # any name for `self`
        super().__init__()
        this.conv = nn.Conv2d(3, 3, 3, padding=1)
        this.norm = nn.BatchNorm2d(3)

    def forward(this, x):
        return this.norm(this.conv(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(2)])
        self.norms = nn.ModuleList([nn.BatchNorm2d(3)])
        self.add_module("final", nn.BatchNorm2d(3))

    def forward(self, x):
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        x = checkpoint(self.norms[0], x, use_reentrant=False)
        return checkpoint(self.final, x, use_reentrant=False)


def _line(obj, text: str) -> int:
    lines, start = inspect.getsourcelines(obj)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_each_finding_names_the_line_that_builds_the_module_and_the_checkpoint_call():
    findings = {d.module: d for d in ema_lint.check_model(Net().train())}
    assert set(findings) == {"blocks.0.norm", "blocks.1.norm", "norms.0", "final"}
    expected = {
        "blocks.0.norm": (_line(Block, "this.norm ="), _line(Net.forward, "checkpoint(block")),
        "norms.0": (_line(Net, "self.norms ="), _line(Net.forward, "checkpoint(self.norms")),
        "final": (_line(Net, 'add_module("final"'), _line(Net.forward, "checkpoint(self.final")),
    }
    torch_file = inspect.getsourcefile(nn.BatchNorm2d)
    for name, (built, called) in expected.items():
        finding = findings[name]
        assert (finding.path, finding.start.line) == (__file__, built), name
        assert finding.notes[0] == f"recomputed by the checkpoint at {__file__}:{called}"
        assert finding.notes[1].startswith(f"`BatchNorm2d` is defined at {torch_file}:")


def test_a_module_of_a_user_class_is_located_at_its_class():
    class Tracked(nn.BatchNorm1d):
        pass

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = Tracked(4)

        def forward(self, x):
            return checkpoint(self.norm, x, use_reentrant=False)

    [finding] = ema_lint.check_model(Outer().train())
    assert (finding.path, finding.start.line) == (__file__, _line(Tracked, "class Tracked"))
    assert not any("is defined at" in note for note in finding.notes)
