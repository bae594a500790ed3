"""EMA201/EMA202/EMA203/EMA301: fixed sources of the fixtures, and bit-exactness of the
`torch._foreach_*` rewrite against the loops it replaces, run on real tensors.

`fixed_source` follows the documented contract of `Fix`: the safe fixes (and, when asked,
the unsafe ones) are applied, overlapping edits wait for the next round, rounds repeat until
nothing fixable is left, and each `RequiredImport` not yet present goes after the module's
last top-level import.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import libcst as cst
import pytest
import torch

from ema_lint.diagnostics import Applicability, RequiredImport
from ema_lint.engine import check_source
from ema_lint.fixes import apply_edits
from ema_lint.registry import enabled_rules


def _import_line(required: RequiredImport) -> str:
    if required.name is None:
        return f"import {required.module}"
    return f"from {required.module} import {required.name}"


def _add_imports(source: str, imports: set[RequiredImport]) -> str:
    module = cst.parse_module(source)
    lines = source.splitlines(keepends=True)
    present = {line.strip() for line in lines}
    missing = sorted(_import_line(i) for i in imports if _import_line(i) not in present)
    if not missing:
        return source
    line, last_import_end = len(module.header), 0
    for statement in module.body:
        line += module.code_for_node(statement).count("\n")
        if isinstance(statement, cst.SimpleStatementLine) and isinstance(
            statement.body[0], (cst.Import, cst.ImportFrom)
        ):
            last_import_end = line
    return "".join(lines[:last_import_end] + [f"{line}\n" for line in missing] + lines[last_import_end:])


def fixed_source(code: str, source: str, *, unsafe: bool, rounds: int = 10) -> str:
    rules = enabled_rules([code], [])
    allowed = {Applicability.SAFE, Applicability.UNSAFE} if unsafe else {Applicability.SAFE}
    for _ in range(rounds):
        diagnostics = check_source("case.py", source.encode(), rules).diagnostics
        fixes = [d.fix for d in diagnostics if d.fixable and d.fix.applicability in allowed]
        if not fixes:
            return source
        chosen, spans = [], []
        for fix in fixes:
            fix_spans = [(e.start, e.end) for e in fix.edits]
            if any(s < other_end and other_start < e for s, e in fix_spans for other_start, other_end in spans):
                continue  # overlapping: left for the next round, as ruff does
            chosen.append(fix)
            spans.extend(fix_spans)
        source = apply_edits(source, [e for fix in chosen for e in fix.edits])
        source = _add_imports(source, {i for fix in chosen for i in fix.imports})
    raise AssertionError(f"fixes did not converge in {rounds} rounds")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CODES = ("EMA201", "EMA202", "EMA203", "EMA301")
CASES = [
    (code, case)
    for code in CODES
    for case in sorted((FIXTURES / code).glob("*.py"))
    if not case.name.endswith((".fixed.py", ".model.py"))
]


@pytest.mark.parametrize(("code", "case"), CASES, ids=[f"{c}/{p.name}" for c, p in CASES])
@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_fixed_source(code: str, case: Path, unsafe: bool, update_fixtures: bool) -> None:
    source = case.read_text()
    actual = fixed_source(code, source, unsafe=unsafe)
    expected_file = case.with_suffix(".unsafe.fixed.py" if unsafe else ".fixed.py")
    if update_fixtures:
        if actual != source:
            expected_file.write_text(actual)
        elif expected_file.exists():
            expected_file.unlink()
    if actual == source:
        assert not expected_file.exists(), f"{expected_file.name} exists but no fix applies"
        return
    cst.parse_module(actual)
    assert expected_file.exists(), f"missing {expected_file}; run pytest --update-fixtures"
    assert actual == expected_file.read_text()


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
