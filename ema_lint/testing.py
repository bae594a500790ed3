"""A helper for users' test suites: fail CI when a model's running statistics or buffers
are unsafe under its checkpointing.

    from ema_lint.testing import assert_no_running_stat_hazards

    def test_model_is_checkpoint_safe():
        model = build_model()
        model.set_grad_checkpointing(True)
        assert_no_running_stat_hazards(model, (torch.randn(2, 3, 64, 64),))
"""

from __future__ import annotations

from typing import Any

import torch

from ema_lint.diagnostics import Diagnostic
from ema_lint.model import audit_copy, check_model, default_step

HAZARD_PREFIXES = ("EMA1", "EMA2")


def assert_no_running_stat_hazards(
    model: torch.nn.Module, example_inputs: tuple[Any, ...], steps: int = 2
) -> None:
    """Trace `model` and run `steps` real training steps on a copy of it; raise AssertionError
    listing every 1xx/2xx finding of either. `model` itself is not changed."""
    found = [d for d in check_model(model) if d.code.startswith(HAZARD_PREFIXES)]
    stepped = audit_copy(model, default_step(example_inputs), steps, train=True)
    found += [d for d in stepped if d.code.startswith(HAZARD_PREFIXES)]
    if found:
        raise AssertionError("running-stat or history hazards found:\n" + "\n".join(_line(d) for d in found))


def _line(diagnostic: Diagnostic) -> str:
    return f"{diagnostic.code} {diagnostic.module or '<root>'}: {diagnostic.message}"
