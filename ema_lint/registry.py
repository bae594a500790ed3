"""The one ordered list of source rules and tool codes, and code selection.

Graph passes report under the same codes as the source rules that find the same hazard
(a hazard keeps one code wherever it is found); their analyses live in `ema_lint.passes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ema_lint.diagnostics import Severity
from ema_lint.rule import Rule
from ema_lint.rules.batchnorm_in_checkpoint import BatchnormInCheckpoint
from ema_lint.rules.ema_update_in_python_loop import EmaUpdateInPythonLoop
from ema_lint.rules.ema_update_keeps_graph import EmaUpdateKeepsGraph
from ema_lint.rules.ema_update_via_data import EmaUpdateViaData
from ema_lint.rules.graph_kept_after_step import GraphKeptAfterStep
from ema_lint.rules.graph_stored_in_buffer import GraphStoredInBuffer
from ema_lint.rules.loss_accumulated_with_graph import LossAccumulatedWithGraph
from ema_lint.rules.momentum_correction_workaround import MomentumCorrectionWorkaround
from ema_lint.rules.stateful_module_in_checkpoint import StatefulModuleInCheckpoint


@dataclass(frozen=True)
class ToolCode:
    """A problem of the tool or its input rather than of the checked code."""

    code: str
    name: str
    severity: Severity
    summary: str


TOOL_CODES: tuple[ToolCode, ...] = (
    ToolCode("EMA001", "syntax-error", Severity.ERROR, "File could not be parsed as Python 3"),
    ToolCode("EMA002", "invalid-config", Severity.ERROR, "Unknown key or bad value in [tool.ema-lint]"),
    ToolCode("EMA003", "model-not-traceable", Severity.INFO, "torch.fx could not trace a model; fell back to module-level analysis"),
    ToolCode("EMA004", "unreadable-file", Severity.ERROR, "File could not be read or decoded, or is too large to check"),
    ToolCode("EMA005", "internal-error", Severity.ERROR, "The checker failed on this file (a bug in ema-lint)"),
)

SOURCE_RULES: tuple[type[Rule], ...] = (
    BatchnormInCheckpoint,
    MomentumCorrectionWorkaround,
    StatefulModuleInCheckpoint,
    EmaUpdateKeepsGraph,
    LossAccumulatedWithGraph,
    EmaUpdateViaData,
    GraphKeptAfterStep,
    GraphStoredInBuffer,
    EmaUpdateInPythonLoop,
)

_TOOL_BY_CODE = {tool.code: tool for tool in TOOL_CODES}
_RULE_BY_CODE = {rule.code: rule for rule in SOURCE_RULES}


def tool_code(code: str) -> ToolCode:
    return _TOOL_BY_CODE[code]


def rule_for(code: str) -> type[Rule] | None:
    return _RULE_BY_CODE.get(code.upper())


def all_codes() -> list[str]:
    return sorted([*_TOOL_BY_CODE, *_RULE_BY_CODE])


def is_known_selector(selector: str) -> bool:
    selector = selector.upper()
    return selector == "ALL" or any(code.startswith(selector) for code in all_codes())


def _specificity(code: str, selector: str) -> int:
    """How specific a matching selector is (`ALL` least), or -1 when it does not match."""
    selector = selector.upper()
    if selector == "ALL":
        return 0
    return len(selector) if code.startswith(selector) else -1


def is_enabled(code: str, select: Iterable[str], ignore: Iterable[str]) -> bool:
    """ruff's precedence: the more specific of a matching select and ignore wins; a tie ignores."""
    selected = max((_specificity(code, s) for s in select), default=-1)
    ignored = max((_specificity(code, s) for s in ignore), default=-1)
    return selected >= 0 and selected > ignored


def enabled_rules(
    select: Iterable[str], ignore: Iterable[str], rules: Iterable[type[Rule]] = SOURCE_RULES
) -> tuple[type[Rule], ...]:
    select, ignore = list(select), list(ignore)
    return tuple(rule for rule in rules if is_enabled(rule.code, select, ignore))
