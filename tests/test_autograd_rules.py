"""EMA203/EMA301: bit-exactness of the `torch._foreach_*` rewrite against the loops it
replaces, run on real tensors from the fixtures and their fixed sources (which
tests/test_fixtures.py produces and checks)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _load(path: Path) -> dict:
    namespace: dict = {"__name__": f"fixture_{path.stem.replace('.', '_')}"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace


def _model(seed: int, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(13, 31), torch.nn.GELU(), torch.nn.Linear(31, 7), torch.nn.LayerNorm(7)
    ).to(dtype)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.dtype))


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _run_steps(namespace: dict, name: str, dtype: torch.dtype, steps: int = 5):
    """Run an EMA from a fixture for `steps` steps against a changing model; return its tensors."""
    model = _model(0, dtype)
    ema_model = _model(1, dtype)
    obj = {
        "MulAddEma": lambda: namespace["MulAddEma"](model, decay=0.9),
        "ScaledAddEma": lambda: namespace["ScaledAddEma"](model, decay=0.9),
        "LerpEma": lambda: namespace["LerpEma"](model, decay=0.9),
        "CopyEma": lambda: namespace["CopyEma"](model, decay=0.9),
        "MethodScaledEma": lambda: namespace["MethodScaledEma"](model, decay=0.9),
        "MoCo": lambda: namespace["MoCo"](model, ema_model, m=0.99),
        "BYOLTarget": lambda: namespace["BYOLTarget"](model, ema_model, tau=0.99),
    }.get(name, lambda: None)()
    for step in range(steps):
        _randomize(model, 100 + step)
        if name == "ema_step":
            namespace["ema_step"](ema_model, model, 0.97)
        elif name == "swa_update":
            namespace["swa_update"](ema_model, model, step)
        elif name == "update_teacher":
            namespace["update_teacher"](model, ema_model, 0.99, step)
        elif name == "MoCo":
            obj._momentum_update_key_encoder()
        elif name == "BYOLTarget":
            obj.update_target()
        else:
            obj.update(model)
    if obj is not None and name not in ("MoCo", "BYOLTarget"):
        return _params(obj.module)
    return _params(ema_model)


FOREACH_CASES = [
    ("EMA301/model_ema_variants", name)
    for name in ("MulAddEma", "ScaledAddEma", "LerpEma", "CopyEma", "MethodScaledEma", "ema_step")
] + [("EMA203/momentum_encoders", name) for name in ("MoCo", "BYOLTarget", "swa_update", "update_teacher")]


# `_foreach_lerp_` rewrites match in every dtype; the `_foreach_mul_` ones only in float32/64
# (see ema_lint/rules/_parameter_loops.py), which is why only the former are safe fixes.
EXACT_IN_EVERY_DTYPE = {"LerpEma", "swa_update"}


# the mean-teacher fixture keeps the deprecated `add_(alpha, other)` spelling on purpose
@pytest.mark.filterwarnings("ignore:This overload of add_ is deprecated")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("case", "name"), FOREACH_CASES, ids=[f"{c}:{n}" for c, n in FOREACH_CASES])
def test_foreach_rewrite_is_bit_exact(case: str, name: str, dtype: torch.dtype) -> None:
    original = _run_steps(_load(FIXTURES / f"{case}.py"), name, dtype)
    rewritten = _run_steps(_load(FIXTURES / f"{case}.unsafe.fixed.py"), name, dtype)
    if dtype in (torch.bfloat16, torch.float16) and name not in EXACT_IN_EVERY_DTYPE:
        # documented last-bit differences: close, and really different (else the fix would be safe)
        assert all(torch.allclose(a, b, rtol=2e-2, atol=2e-2) for a, b in zip(original, rewritten))
        assert not all(torch.equal(a, b) for a, b in zip(original, rewritten))
        return
    assert len(original) == len(rewritten) == 6
    for before, after in zip(original, rewritten):
        assert before.dtype == after.dtype == dtype
        assert torch.equal(before, after)
    # the EMA moved: the comparison is not between two untouched copies
    assert not torch.equal(original[0], _params(_model(1, dtype))[0])


@pytest.mark.parametrize(("case", "name"), FOREACH_CASES, ids=[f"{c}:{n}" for c, n in FOREACH_CASES])
def test_only_every_dtype_exact_rewrites_are_safe(case: str, name: str) -> None:
    """The safe-fixed source rewrites exactly the loops whose rewrite is exact in every dtype."""
    safe_fixed = _load(FIXTURES / f"{case}.fixed.py") if (FIXTURES / f"{case}.fixed.py").exists() else {}
    target = safe_fixed.get(name)
    function = getattr(target, "update", target) if isinstance(target, type) else target
    if name in ("MoCo",):
        function = target._momentum_update_key_encoder
    elif name == "BYOLTarget":
        function = target.update_target
    source = inspect.getsource(function) if function is not None else ""
    assert ("for " not in source) == (name in EXACT_IN_EVERY_DTYPE), source
