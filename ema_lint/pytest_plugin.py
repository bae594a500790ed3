"""pytest plugin (entry point `pytest11`): the `ema_lint_model_check` fixture.

    def test_model_is_safe_to_checkpoint(ema_lint_model_check):
        model = build_model()
        model.set_grad_checkpointing(True)
        ema_lint_model_check(model, (torch.randn(2, 3, 64, 64),))

The check traces the model (`check_model`) and runs real training steps on a copy of it
(`audit`); any running-statistics (EMA1xx) or autograd-history (EMA2xx) hazard fails the
test with one entry per module: where it is, what goes wrong, and the fix to apply.
pytest loads this module in every session of an environment that has ema-lint, so torch
is imported only when the fixture is used.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pytest

from ema_lint.diagnostics import Diagnostic

if TYPE_CHECKING:
    import torch

HAZARD_PREFIXES = ("EMA1", "EMA2")


class ModelCheck:
    """The callable the fixture returns."""

    def __call__(
        self,
        model: "torch.nn.Module",
        example_inputs: tuple[Any, ...] | None = None,
        *,
        step: Callable[["torch.nn.Module"], Any] | None = None,
        steps: int = 2,
    ) -> list[Diagnostic]:
        """Fail the test when `model` has a running-stat or history hazard. The audit runs
        `step(model)` (forward and backward; default: forward `example_inputs`, backward the
        sum of the outputs) `steps` times on a deep copy, so `model` is not changed. Returns
        the findings that do not fail the test (EMA003 when the model cannot be traced)."""
        from ema_lint.model import audit_copy, check_model, default_step

        if step is None:
            if example_inputs is None:
                raise TypeError("ema_lint_model_check needs example_inputs or step=")
            step = default_step(example_inputs)
        traced = check_model(model)
        stepped = audit_copy(model, step, steps, train=True)
        hazards = [d for d in [*traced, *stepped] if d.code.startswith(HAZARD_PREFIXES)]
        if hazards:
            pytest.fail(hazard_report(type(model).__name__, hazards), pytrace=False)
        return [d for d in [*traced, *stepped] if not d.code.startswith(HAZARD_PREFIXES)]


@pytest.fixture
def ema_lint_model_check() -> ModelCheck:
    """Call it with a model and example inputs (or `step=`) to assert the model is free of
    running-statistics and autograd-history hazards under its checkpointing."""
    return ModelCheck()


def hazard_report(model_name: str, hazards: Sequence[Diagnostic]) -> str:
    """One entry per (code, module): the traced finding first, the steps' evidence after it,
    and the fix (the traced finding's, else the analysis' standard fix for that code)."""
    groups: dict[tuple[str, str], list[Diagnostic]] = {}
    for diagnostic in hazards:
        groups.setdefault((diagnostic.code, diagnostic.module or ""), []).append(diagnostic)
    count = len(groups)
    lines = [f"ema-lint found {count} running-stat or autograd-history hazard{'s' * (count != 1)} in `{model_name}`:"]
    for (code, module), found in groups.items():
        first = found[0]
        lines.append("")
        lines.append(f"{code} {first.name} at `{module or '<root>'}` ({_where(first)})")
        lines.extend(f"  {d.message}" for d in found)
        lines.append(f"  fix: {_fix_title(code, found)}")
    return "\n".join(lines)


def _where(diagnostic: Diagnostic) -> str:
    path = diagnostic.path
    if not path.startswith("<"):
        relative = os.path.relpath(path)
        path = path if relative.startswith("..") else relative
    return f"{path}:{diagnostic.start.line}"


def _fix_title(code: str, found: Sequence[Diagnostic]) -> str:
    for diagnostic in found:
        if diagnostic.fix is not None:
            return diagnostic.fix.title
    standard = _standard_fixes().get(code)
    return standard if standard is not None else f"see `ema-lint rule {code}`"


def _standard_fixes() -> dict[str, str]:
    """The fix each graph analysis attaches, for findings only the real steps showed (a model
    fx cannot trace)."""
    # by module path: `ema_lint.passes` exports functions of the same names as these modules
    analyses = {
        "EMA101": "find_running_stats_in_checkpoint",
        "EMA103": "find_stateful_modules_in_checkpoint",
        "EMA201": "find_ema_history",
    }
    return {code: importlib.import_module(f"ema_lint.passes.{name}").FIX.title for code, name in analyses.items()}
