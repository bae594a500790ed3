"""Diagnostics for people: text (optionally with code frames), full, concise and grouped
lines, the summary and per-code statistics. Pure functions from data to strings; the formats
other tools read are in `report_formats`."""

from __future__ import annotations

import collections
import json
import os
from typing import Callable, Sequence

from ema_lint.diagnostics import Applicability, Diagnostic, Severity
from ema_lint.report_formats import RENDERERS
from ema_lint.text import printable

FORMATS = ("text", "full", "concise", "grouped", *RENDERERS)
_COLOURS = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _relative(path: str) -> str:
    if path.startswith("<"):
        return path
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _marker(diagnostic: Diagnostic) -> str:
    return "[*] " if diagnostic.fixable else ""




def _where(d: Diagnostic) -> str:
    """`path:line:col`, or `path:cell N:line:col` in a notebook (ruff's form)."""
    cell = f"cell {d.cell}:" if d.cell is not None else ""
    # a file name may hold a newline too: each finding stays one line
    return f"{printable(_relative(d.path), newline=True)}:{cell}{d.start.line}:{d.start.column}"


def render_concise(diagnostics: Sequence[Diagnostic]) -> str:
    return "".join(f"{_where(d)}: {d.code} {_marker(d)}{printable(d.message)}\n" for d in diagnostics)


def render_text(
    diagnostics: Sequence[Diagnostic],
    *,
    show_source: bool,
    read_lines: Callable[[Diagnostic], list[str] | None],
    style: Callable[..., str],
) -> str:
    out = []
    for d in diagnostics:
        where = style(f"{_where(d)}:", bold=True)
        code = style(d.code, fg=_COLOURS[d.severity], bold=True)
        module = f" (module `{d.module}`)" if d.module else ""
        out.append(f"{where} {code} {_marker(d)}{printable(d.message)}{module}\n")
        if show_source:
            out.append(_code_frame(d, read_lines(d), style))
        if d.fix is not None:
            kind = {
                Applicability.SAFE: "",
                Applicability.UNSAFE: " (unsafe fix)",
                Applicability.DISPLAY_ONLY: "",
            }[d.fix.applicability]
            out.append(f"  {style('help', fg='cyan', bold=True)}: {d.fix.title}{kind}\n")
        out.extend(f"  {style('note', bold=True)}: {printable(note)}\n" for note in d.notes)
    return "".join(out)


def _code_frame(d: Diagnostic, lines: list[str] | None, style) -> str:
    if not lines or not 0 < d.start.line <= len(lines):
        return ""
    first = max(1, d.start.line - 1)
    last = min(len(lines), d.start.line + 1)
    width = len(str(last))
    gutter = style(" " * width + " |", fg="blue", bold=True)
    frame = [gutter + "\n"]
    for number in range(first, last + 1):
        text = lines[number - 1].rstrip("\r\n")
        frame.append(style(f"{number:>{width}} |", fg="blue", bold=True) + f" {text}\n")
        if number == d.start.line:
            end = d.end.column if d.end.line == d.start.line else len(text) + 1
            carets = "^" * max(1, end - d.start.column)
            frame.append(gutter + " " * d.start.column + style(carets, fg=_COLOURS[d.severity], bold=True) + "\n")
    frame.append(gutter + "\n")
    return "".join(frame)


def render_grouped(diagnostics: Sequence[Diagnostic]) -> str:
    """Findings under their file's name, as ruff's `grouped` format."""
    out = []
    by_file: dict[str, list[Diagnostic]] = {}
    for d in diagnostics:
        by_file.setdefault(d.path, []).append(d)
    for path, found in by_file.items():
        out.append(f"{printable(_relative(path), newline=True)}:\n")
        for d in found:
            cell = f"cell {d.cell}:" if d.cell is not None else ""
            out.append(f"  {cell}{d.start.line}:{d.start.column} {d.code} {_marker(d)}{printable(d.message)}\n")
        out.append("\n")
    return "".join(out)


def _per_code(diagnostics: Sequence[Diagnostic]) -> list[tuple[str, str, int, int]]:
    """(code, name, count, fixable count), most frequent first."""
    counts = collections.Counter((d.code, d.name) for d in diagnostics)
    fixable = collections.Counter(d.code for d in diagnostics if d.fixable)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(code, name, count, fixable[code]) for (code, name), count in ranked]


def render_statistics(diagnostics: Sequence[Diagnostic]) -> str:
    """The per-code counts `--statistics` prints instead of the findings."""
    return "".join(
        f"{count:>5}\t{code}\t{'[*]' if fixable else '   '}\t{name}\n" for code, name, count, fixable in _per_code(diagnostics)
    )


def render_statistics_json(diagnostics: Sequence[Diagnostic]) -> str:
    records = [
        {"code": code, "name": name, "count": count, "fixable": bool(fixable), "fixable_count": fixable}
        for code, name, count, fixable in _per_code(diagnostics)
    ]
    return json.dumps(records, indent=2) + "\n"


def render_summary(diagnostics: Sequence[Diagnostic]) -> str:
    out = []
    if diagnostics:
        plural = "s" if len(diagnostics) != 1 else ""
        out.append(f"Found {len(diagnostics)} finding{plural}.\n")
        safe = sum(d.fixable for d in diagnostics)
        unsafe = sum(d.has_fix(Applicability.UNSAFE) for d in diagnostics)
        if safe:
            out.append(f"[*] {safe} fixable with `ema-lint fix --write`.\n")
        if unsafe:
            out.append(f"{unsafe} more fixable with `ema-lint fix --write --unsafe-fixes`.\n")
    else:
        out.append("All checks passed!\n")
    return "".join(out)
