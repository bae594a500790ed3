"""Fixing one file's bytes: check, apply the chosen fixes, re-check, until nothing changes.

Works on bytes so the result keeps the file's encoding (PEP 263 line, BOM), its line
endings and a missing final newline; every byte outside an edit is the input's byte.
A round that breaks the file, a fix that keeps coming back, or a result that does not
parse and `compile()` leaves the source exactly as it was, with the reason in `problem`.
Never imports or executes the code it fixes.
"""

from __future__ import annotations

import collections
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import libcst as cst

from ema_lint.diagnostics import Applicability, Diagnostic, Edit
from ema_lint.engine import check_source
from ema_lint.fixes import OverlappingEdits, apply_edits
from ema_lint.project import ProjectIndex, summarize
from ema_lint.required_imports import ImportConflict, add_required_imports
from ema_lint.rule import Rule

# ruff stops at 100; real fixes here settle in two or three rounds (a fix that needs an
# import, then nothing), so ten only ever trips on a rule whose fix does not remove its finding.
MAX_ROUNDS = 10
LONE_LINE_FEED = re.compile(r"(?<!\r)\n")


@dataclass
class FixedSource:
    """What fixing one file's bytes gave. `fixed == source` when nothing applied or on failure."""

    path: str
    source: bytes
    fixed: bytes
    # code -> number of fixes of that code applied, over all rounds
    applied: collections.Counter = field(default_factory=collections.Counter)
    # findings left in `fixed` (in `source` when `problem` is set)
    remaining: list[Diagnostic] = field(default_factory=list)
    # findings in `source`, before any fix
    found: list[Diagnostic] = field(default_factory=list)
    # why the source was left as it was, although fixes were available
    problem: str | None = None


def is_applicable(diagnostic: Diagnostic, unsafe: bool) -> bool:
    fix = diagnostic.fix
    if fix is None or not fix.edits:
        return False
    if fix.applicability is Applicability.SAFE:
        return True
    return unsafe and fix.applicability is Applicability.UNSAFE


def choose_fixes(diagnostics: Sequence[Diagnostic], unsafe: bool) -> list[Diagnostic]:
    """Fixable diagnostics whose edits do not overlap, first in the file first.

    A fix is taken whole or not at all; one that overlaps a taken fix waits for the next
    round, where it is recomputed against the new text. Identical fixes (two findings
    sharing one repair) are applied once.
    """
    taken: list[Diagnostic] = []
    spans: list[tuple] = []
    seen_fixes = set()
    candidates = sorted(
        (d for d in diagnostics if is_applicable(d, unsafe)),
        key=lambda d: (min(e.start for e in d.fix.edits), d.code),
    )
    for diagnostic in candidates:
        fix = diagnostic.fix
        key = (fix.edits, fix.imports)
        if key in seen_fixes:
            taken.append(diagnostic)
            continue
        edit_spans = [(e.start, e.end) for e in fix.edits]
        if any(_overlaps(a, b) for a in edit_spans for b in spans):
            continue
        seen_fixes.add(key)
        spans.extend(edit_spans)
        taken.append(diagnostic)
    return taken


def _overlaps(a: tuple, b: tuple) -> bool:
    # two insertions at one point overlap too: their order would be a guess
    return (a[0] < b[1] and b[0] < a[1]) or a == b or (a[0] == a[1] == b[0]) or (b[0] == b[1] == a[0])


class FixFailed(Exception):
    pass


def apply_fixes(source: bytes, chosen: Sequence[Diagnostic]) -> bytes:
    """`source` with the fixes of `chosen` applied and their imports added; raises FixFailed."""
    module = cst.parse_module(source)
    newline = module.default_newline
    unique = {(d.fix.edits, d.fix.imports): d.fix for d in chosen}.values()
    edits = [
        Edit(edit.start, edit.end, _with_newline(edit.content, newline))
        for fix in unique
        for edit in fix.edits
    ]
    try:
        text = apply_edits(module.code, edits)
        text = add_required_imports(text, [i for fix in unique for i in fix.imports], newline)
    except (OverlappingEdits, ImportConflict) as error:
        raise FixFailed(str(error)) from error
    except cst.ParserSyntaxError as error:
        raise FixFailed(f"the fixed source does not parse: {' '.join(error.message.split())}") from error
    try:
        return text.encode(module.encoding)
    except UnicodeEncodeError as error:
        raise FixFailed(f"the fixed source cannot be encoded as {module.encoding}: {error.reason}") from error


def _with_newline(content: str, newline: str) -> str:
    """Rules write `\\n`; in a CRLF (or CR) file the inserted lines must end the same way."""
    return content if newline == "\n" else LONE_LINE_FEED.sub(newline, content)


def verify(path: str, before: bytes, after: bytes) -> str | None:
    """Why `after` may not replace `before`, or None when it may."""
    try:
        fixed_module = cst.parse_module(after)
    except cst.ParserSyntaxError as error:
        return f"the fixed source does not parse: {' '.join(error.message.split())}"
    original_encoding = cst.parse_module(before).encoding
    if fixed_module.encoding != original_encoding:
        return f"the fix changed the file's encoding from {original_encoding} to {fixed_module.encoding}"
    with warnings.catch_warnings():
        # third-party code is full of invalid escape sequences; those warnings are not ours
        warnings.simplefilter("ignore")
        try:
            compile(after, path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as error:
            if not _compiles(before, path):
                # written for a newer Python than this one: libcst's parse above is the check
                return None
            reason = getattr(error, "msg", None) or str(error)
            return f"the fixed source does not compile: {reason}"
    return None


def _compiles(source: bytes, path: str) -> bool:
    try:
        compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def fix_source(
    path: str,
    source: bytes,
    rules: Sequence[type[Rule]],
    *,
    unsafe: bool = False,
    project: ProjectIndex | None = None,
    module_name: str = "",
    keep: Callable[[list[Diagnostic]], list[Diagnostic]] = list,
) -> FixedSource:
    """Apply fixes to `source` until none is left to apply, at most MAX_ROUNDS rounds.

    `keep` filters each round's findings as the report would (per-file ignores): a finding
    the user does not see is not fixed either.
    """
    applied: collections.Counter = collections.Counter()
    current = source
    seen = {source}
    first_findings: list[Diagnostic] | None = None
    for _ in range(MAX_ROUNDS + 1):
        findings = keep(
            check_source(path, current, rules, _with_own_facts(project, module_name, current), module_name).diagnostics
        )
        if first_findings is None:
            first_findings = findings
        chosen = choose_fixes(findings, unsafe)
        if not chosen:
            return FixedSource(path, source, current, applied, findings, first_findings)
        codes = sorted({d.code for d in chosen})
        try:
            fixed = apply_fixes(current, chosen)
        except FixFailed as error:
            return _failed(path, source, first_findings, f"fix for {', '.join(codes)} failed: {error}")
        problem = verify(path, current, fixed)
        if problem is not None:
            return _failed(path, source, first_findings, f"fix for {', '.join(codes)} rejected: {problem}")
        if fixed in seen:
            return _failed(
                path, source, first_findings, f"fixes for {', '.join(codes)} do not converge (they undo each other)"
            )
        seen.add(fixed)
        applied.update(d.code for d in chosen)
        current = fixed
    return _failed(
        path, source, first_findings, f"fixes for {', '.join(codes)} did not converge in {MAX_ROUNDS} rounds"
    )


def _failed(path: str, source: bytes, findings: list[Diagnostic], problem: str) -> FixedSource:
    return FixedSource(path, source, source, collections.Counter(), findings, findings, problem)


def _with_own_facts(project: ProjectIndex | None, module_name: str, source: bytes) -> ProjectIndex | None:
    """The project index with this file's facts taken from its current text: a fix can add imports."""
    if project is None or not module_name:
        return project
    try:
        known = project.modules.get(module_name)
        facts = summarize(module_name, source, renames=known.import_renames if known is not None else ())
    except (SyntaxError, ValueError):
        return project
    return project.with_module(facts)
