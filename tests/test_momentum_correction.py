"""EMA102's recognition of momentum corrections and the momentum its fix restores."""

from __future__ import annotations

from textwrap import dedent

import libcst as cst
import pytest

from ema_lint.diagnostics import Applicability
from ema_lint.engine import check_source
from ema_lint.fixes import apply_edits
from ema_lint.registry import enabled_rules
from ema_lint.rules.momentum_correction_workaround import _uncorrected


@pytest.mark.parametrize(
    ("expression", "restored"),
    [
        ("1 - math.sqrt(1 - 0.1)", "0.1"),
        ("1 - sqrt(1 - m)", "m"),
        ("1. - np.sqrt(1. - self.momentum)", "self.momentum"),
        ("1 - (1 - (a + b)) ** 0.5", "a + b"),
        ("1 - 0.9 ** 0.5", "0.1"),
        ("1 - 0.99 ** (1 / 2)", "0.01"),
        ("1 - pow(decay, .5)", "1 - decay"),
        ("1 - torch.sqrt(d * e)", "1 - (d * e)"),
        ("1 - math.pow(1 - m, 0.5)", "m"),
    ],
)
def test_corrections_and_the_momentum_they_came_from(expression: str, restored: str) -> None:
    assert _uncorrected(cst.parse_expression(expression)) == restored


@pytest.mark.parametrize(
    "expression",
    ["1 - math.sqrt(2, 3)", "2 - math.sqrt(1 - m)", "1 - m ** 2", "1 + math.sqrt(1 - m)", "1 - math.exp(m)", "0.1"],
)
def test_other_expressions_are_not_corrections(expression: str) -> None:
    assert _uncorrected(cst.parse_expression(expression)) is None


def test_in_place_correction_is_dropped_and_the_region_fixed() -> None:
    source = dedent(
        """
        import math
        import torch.nn as nn
        from torch.utils.checkpoint import checkpoint

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
                for m in self.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.momentum = 1 - math.sqrt(1 - m.momentum)

            def forward(self, x):
                return checkpoint(self.body, x, use_reentrant=False)
        """
    )
    result = check_source("net.py", source.encode(), enabled_rules(["EMA102"], []), module_name="net")
    [finding] = result.diagnostics
    assert (finding.start.line, finding.start.column) == (12, 30)
    assert finding.fix.applicability is Applicability.UNSAFE
    assert finding.fix.title == "Drop the momentum correction and add `context_fn=running_stats_context_fn` at each checkpoint"
    fixed = apply_edits(source, finding.fix.edits)
    assert "            if isinstance(m, nn.BatchNorm2d):\n                pass\n" in fixed
    assert "checkpoint(self.body, x, use_reentrant=False, context_fn=running_stats_context_fn)" in fixed
    assert "momentum" not in fixed
