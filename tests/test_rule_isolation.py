"""Rules share per-file facts through collectors the engine owns, so no rule can switch
another off by what it defines, in whatever order the registry lists them."""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest

from ema_lint.engine import check_source
from ema_lint.registry import rule_for
from ema_lint.rules._autograd import AutogradRule

ACCUMULATES = textwrap.dedent(
    """
    import torch

    total = 0.0
    for batch in range(3):
        loss = torch.ones(1, requires_grad=True).sum()
        loss.backward()
        total += loss
    """
)


class SeesCallsItself(AutogradRule):
    """A rule that defines the very hooks the shared collector needs."""

    code = "EMA999"
    name = "sees-calls-itself"
    summary = "test rule"
    severity = rule_for("EMA202").severity

    def visit_Call(self, node: cst.Call) -> None:
        pass

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        pass

    def check(self, facts) -> None:
        pass


@pytest.mark.parametrize("first", [True, False])
def test_a_rule_defining_visit_call_does_not_switch_ema202_off(first: bool) -> None:
    accumulated = rule_for("EMA202")
    rules = [SeesCallsItself, accumulated] if first else [accumulated, SeesCallsItself]
    result = check_source("train.py", ACCUMULATES.encode(), rules)
    assert [d.code for d in result.diagnostics] == ["EMA202"]


def test_two_checks_interleaved_on_one_thread_keep_their_own_facts() -> None:
    """An editor server may check two buffers at once; facts live in each file's context."""
    accumulated = rule_for("EMA202")
    clean = "import torch\ntotal = 0.0\nfor b in range(3):\n    total += 1.0\n"
    first = check_source("a.py", ACCUMULATES.encode(), [accumulated])
    second = check_source("b.py", clean.encode(), [accumulated])
    third = check_source("a.py", ACCUMULATES.encode(), [accumulated])
    assert [d.code for d in first.diagnostics] == ["EMA202"] == [d.code for d in third.diagnostics]
    assert second.diagnostics == []
