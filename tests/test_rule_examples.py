"""Each rule's VALID/INVALID examples are executable: the same text `ema-lint rule CODE` prints."""

from __future__ import annotations

import pytest

from ema_lint.engine import check_source
from ema_lint.fixer import fix_source
from ema_lint.project import ProjectIndex, summarize
from ema_lint.registry import SOURCE_RULES
from ema_lint.rule import Example, Rule


def _examples(kind: str) -> list[tuple[type[Rule], int, Example]]:
    return [(rule, i, ex) for rule in SOURCE_RULES for i, ex in enumerate(getattr(rule, kind))]


def _check(rule: type[Rule], example: Example):
    source = example.source.encode()
    project = ProjectIndex.from_facts([summarize("example", source)])
    return check_source("example.py", source, [rule], project, "example").diagnostics


@pytest.mark.parametrize(
    ("rule", "index", "example"), _examples("VALID"), ids=lambda v: getattr(v, "code", str(v))
)
def test_valid_example_is_silent(rule: type[Rule], index: int, example: Example) -> None:
    assert _check(rule, example) == []


@pytest.mark.parametrize(
    ("rule", "index", "example"), _examples("INVALID"), ids=lambda v: getattr(v, "code", str(v))
)
def test_invalid_example_is_reported(rule: type[Rule], index: int, example: Example) -> None:
    diagnostics = _check(rule, example)
    assert [d.code for d in diagnostics][:1] == [rule.code]
    if example.message is not None:
        assert diagnostics[0].message == example.message
    if example.fixed is not None:
        # the whole fix as `ema-lint fix --unsafe-fixes` applies it: edits, imports, later rounds
        source = example.source.encode()
        project = ProjectIndex.from_facts([summarize("example", source)])
        fixed = fix_source("example.py", source, [rule], unsafe=True, project=project, module_name="example")
        assert fixed.problem is None, fixed.problem
        assert fixed.fixed.decode() == Example(example.fixed).source


def test_every_rule_documents_itself_with_examples() -> None:
    for rule in SOURCE_RULES:
        assert rule.VALID and rule.INVALID, rule.code
        doc = rule.__doc__ or ""
        for heading in ("## What it does", "## Why is this bad?", "## Example", "## Use instead"):
            assert heading in doc, f"{rule.code} docstring lacks {heading!r}"
