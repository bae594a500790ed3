"""Every fixture under fixtures/<CODE>/ is checked with only its own rule enabled.

A case is `<case>.py` with `<case>.expected.txt` (`line:col CODE message` per finding), or a
directory `<case>/` checked as one project, with `<case>/expected.txt`
(`relative/path.py:line:col CODE message`). `pytest --update-fixtures` rewrites expectations.

A single-file case whose safe fixes change it has `<case>.fixed.py`; one whose unsafe fixes
change it further has `<case>.unsafe.fixed.py` (safe and unsafe applied). Every case is
fixed both ways: the fixes must converge, the result must compile, and fixing it again
must change nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ema_lint.analysis.syntax import parse_any
from ema_lint.fixer import fix_source
from ema_lint.project import ProjectIndex, summarize
from ema_lint.registry import SOURCE_RULES, enabled_rules
from ema_lint.runner import SourceFile, check_files

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SUFFIXES_NOT_CASES = (".fixed.py", ".unsafe.fixed.py", ".model.py")


def _cases() -> list[tuple[str, Path]]:
    cases = []
    for code_dir in sorted(p for p in FIXTURES.iterdir() if p.is_dir() and p.name.startswith("EMA")):
        for entry in sorted(code_dir.iterdir()):
            if entry.is_dir() or (entry.suffix == ".py" and not entry.name.endswith(SUFFIXES_NOT_CASES)):
                cases.append((code_dir.name, entry))
    return cases


def render_case(code: str, case: Path) -> str:
    rules = enabled_rules([code], [])
    assert rules, f"fixtures/{code} has no rule with that code"
    if case.is_dir():
        root = case
        files = sorted(str(p) for p in case.rglob("*.py"))
    else:
        root, files = case.parent, [str(case)]
    report = check_files([SourceFile(f, str(root)) for f in files], rules)
    lines = []
    for d in report.diagnostics:
        prefix = f"{os.path.relpath(d.path, root)}:" if case.is_dir() else ""
        lines.append(f"{prefix}{d.start.line}:{d.start.column} {d.code} {d.message}")
    return "".join(f"{line}\n" for line in lines)


def expectation_path(case: Path) -> Path:
    return case / "expected.txt" if case.is_dir() else case.with_suffix(".expected.txt")


@pytest.mark.parametrize(
    ("code", "case"), _cases(), ids=[f"{c}/{p.name}" for c, p in _cases()]
)
def test_fixture_diagnostics(code: str, case: Path, update_fixtures: bool) -> None:
    actual = render_case(code, case)
    expected_file = expectation_path(case)
    if update_fixtures:
        expected_file.write_text(actual)
    assert expected_file.exists(), f"missing {expected_file}; run pytest --update-fixtures"
    assert actual == expected_file.read_text()


def test_every_rule_has_fixtures() -> None:
    codes_with_cases = {code for code, _ in _cases()}
    missing = [rule.code for rule in SOURCE_RULES if rule.code not in codes_with_cases]
    assert not missing, f"rules without fixtures: {missing}"


FIX_EXPECTATIONS = ((".fixed.py", False), (".unsafe.fixed.py", True))


def _compiles_here(source: bytes) -> bool:
    try:
        compile(source, "<fixture>", "exec", dont_inherit=True)
    except SyntaxError:
        return False
    return True


def _fix_case(code: str, case: Path, source: bytes, unsafe: bool):
    module_name = SourceFile(str(case), str(case.parent)).module_name
    project = ProjectIndex.from_facts([summarize(module_name, source)])
    return fix_source(
        str(case), source, enabled_rules([code], []), unsafe=unsafe, project=project, module_name=module_name
    )


@pytest.mark.parametrize(
    ("code", "case"),
    [c for c in _cases() if c[1].is_file()],
    ids=[f"{c}/{p.name}" for c, p in _cases() if p.is_file()],
)
def test_fixture_fixes_converge_compile_and_are_idempotent(code: str, case: Path, update_fixtures: bool) -> None:
    source = case.read_bytes()
    baseline = source
    for suffix, unsafe in FIX_EXPECTATIONS:
        result = _fix_case(code, case, source, unsafe)
        assert result.problem is None, result.problem
        if _compiles_here(source):
            compile(result.fixed, str(case), "exec", dont_inherit=True)
        else:  # written for a newer Python: the fixed code must still parse as such
            parse_any(result.fixed)
        again = _fix_case(code, case, result.fixed, unsafe)
        assert (again.fixed, dict(again.applied), again.problem) == (result.fixed, {}, None), "second fix is not a no-op"
        expected_file = case.with_name(case.name.removesuffix(".py") + suffix)
        if update_fixtures:
            if result.fixed != baseline:
                expected_file.write_bytes(result.fixed)
            elif expected_file.exists():
                expected_file.unlink()
        if result.fixed == baseline:
            assert not expected_file.exists(), f"{expected_file.name} is stale: fixes no longer change {case.name}"
        else:
            assert expected_file.exists(), f"missing {expected_file}; run pytest --update-fixtures"
            assert result.fixed == expected_file.read_bytes()
        baseline = result.fixed
