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


DATA_LOOP = textwrap.dedent(
    """
    import torch

    @torch.no_grad()
    def momentum_update(encoder_q, encoder_k, m):
        for param_q, param_k in zip(encoder_q.parameters(), encoder_k.parameters()):
            param_k.data = param_k.data * m + param_q.data * (1.0 - m)

    def single(state, value, m):
        state.data = state.data * m + value * (1.0 - m)
    """
)


def test_one_finding_per_site_a_data_loop_is_ema301_with_a_note() -> None:
    rules = [rule_for("EMA203"), rule_for("EMA301")]
    result = check_source("ema.py", DATA_LOOP.encode(), rules)
    assert [(d.code, d.start.line) for d in result.diagnostics] == [("EMA301", 6), ("EMA203", 10)]
    (loop,) = [d for d in result.diagnostics if d.code == "EMA301"]
    assert "`.data`" in loop.notes[0]
    alone = check_source("ema.py", DATA_LOOP.encode(), [rule_for("EMA203")])
    assert [(d.code, d.start.line) for d in alone.diagnostics] == [("EMA203", 7), ("EMA203", 10)]
