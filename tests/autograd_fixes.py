"""Applying this area's fixes to whole fixture files, for tests/test_autograd_rules.py.

Mirrors the documented contract of `Fix`: the safe fixes (and, when asked, the unsafe ones)
are applied, non-overlapping edits first-come, re-checked until nothing fixable is left, and
each `RequiredImport` not yet present is added after the module's last top-level import.
"""

from __future__ import annotations

import libcst as cst

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
    last_import_end = 0
    for statement in module.body:
        if isinstance(statement, cst.SimpleStatementLine) and isinstance(
            statement.body[0], (cst.Import, cst.ImportFrom)
        ):
            last_import_end = module.code[: module.code.index(module.code_for_node(statement))].count("\n") + 1
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
