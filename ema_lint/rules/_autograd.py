"""Bases of the rules that judge a whole file from its `FileFacts` (EMA201-EMA204, EMA301)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from ema_lint.analysis.function_facts import FunctionFactsCollector
from ema_lint.analysis.value_flow import CrossFileFacts, FileFacts
from ema_lint.rule import Rule

if TYPE_CHECKING:
    from ema_lint.project import ProjectIndex


class AutogradRule(Rule):
    """Base of the rules that read `FileFacts`; they judge the whole file in `check`."""

    COLLECTORS = (FunctionFactsCollector,)

    def leave_Module(self, original_node: cst.Module) -> None:
        context = self.context
        facts = context.derived(
            FileFacts,
            lambda: FileFacts(
                original_node, context.collected(FunctionFactsCollector), ProjectView(context.project, context.module_name)
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


class ProjectView(CrossFileFacts):
    """The project index as the code of one module sees it."""

    def __init__(self, project: "ProjectIndex", module_name: str) -> None:
        self.project = project
        self.module_name = module_name

    def returns_no_graph(self, dotted: str) -> bool:
        return self.project.returns_no_graph(self.module_name, dotted)

    def returns_backpropagated(self, dotted: str, position: int | None) -> bool:
        return self.project.returns_backpropagated(self.module_name, dotted, position)

    def backpropagates(self, dotted: str) -> bool:
        return self.project.backpropagates(self.module_name, dotted)

    def only_called_with_grad_off(self, name: str) -> bool:
        return self.project.only_called_with_grad_off(name)

    def called_elsewhere(self, name: str) -> bool:
        return self.project.called_outside(self.module_name, name)
