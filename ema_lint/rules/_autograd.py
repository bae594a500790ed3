"""Bases of the rules that judge a whole file from its `FileFacts` (EMA201-EMA204, EMA301)."""

from __future__ import annotations

import libcst as cst

from ema_lint.analysis.function_facts import FunctionFactsCollector
from ema_lint.analysis.value_flow import FileFacts
from ema_lint.rule import Rule


class AutogradRule(Rule):
    """Base of the rules that read `FileFacts`; they judge the whole file in `check`."""

    COLLECTORS = (FunctionFactsCollector,)

    def leave_Module(self, original_node: cst.Module) -> None:
        context = self.context
        facts = context.derived(
            FileFacts,
            lambda: FileFacts(
                original_node,
                context.collected(FunctionFactsCollector),
                lambda dotted: context.project.returns_no_graph(context.module_name, dotted),
                context.project.only_called_with_grad_off,
            ),
        )
        if not facts.foreign:
            self.check(facts)

    def check(self, facts: FileFacts) -> None:
        raise NotImplementedError


class RecurrenceRule(AutogradRule):
    """Base of the rules whose every finding is a recognised EMA step (`find_recurrences`):
    a file whose phase-1 facts show no statement of that shape is never parsed for them."""

    @classmethod
    def structurally_possible(cls, project, module_name: str) -> bool:
        facts = project.modules.get(module_name)
        return facts is None or facts.may_hold_recurrence
