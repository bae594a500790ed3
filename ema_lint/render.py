"""Diagnostics as text (optionally with code frames), concise lines, JSON, SARIF 2.1.0 and
GitHub Actions workflow commands. Pure functions from data to strings."""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Callable, Sequence

from ema_lint import __version__
from ema_lint.diagnostics import Applicability, Diagnostic, Severity
from ema_lint.registry import TOOL_CODES, rule_for, tool_code

FORMATS = ("text", "concise", "json", "sarif", "github")
_COLOURS = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _relative(path: str) -> str:
    if path.startswith("<"):
        return path
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _marker(diagnostic: Diagnostic) -> str:
    return "[*] " if diagnostic.fixable else ""


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str, *, newline: bool = False) -> str:
    """`text` with control characters (an escape sequence in a file name or a string
    literal quoted in a message), and with `newline` line feeds too, shown as `\\x1b`, so
    they cannot drive the terminal or forge a line."""
    return (_CONTROL_OR_NEWLINE if newline else _CONTROL).sub(lambda m: f"\\x{ord(m.group()):02x}", text)


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


def render_summary(diagnostics: Sequence[Diagnostic], *, statistics: bool) -> str:
    out = []
    if statistics:
        counts = collections.Counter((d.code, d.name) for d in diagnostics)
        fixable = collections.Counter(d.code for d in diagnostics if d.fixable)
        for (code, name), count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            out.append(f"{count:>5}\t{code}\t{'[*]' if fixable[code] else '   '}\t{name}\n")
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


def _as_dict(d: Diagnostic) -> dict:
    fix = None
    if d.fix is not None:
        fix = {
            "title": d.fix.title,
            "applicability": d.fix.applicability.value,
            "edits": [
                {
                    "location": {"row": e.start.line, "column": e.start.column},
                    "end_location": {"row": e.end.line, "column": e.end.column},
                    "content": e.content,
                }
                for e in d.fix.edits
            ],
            "imports": [{"module": i.module, "name": i.name} for i in d.fix.imports],
        }
    return {
        "code": d.code,
        "name": d.name,
        "message": d.message,
        "severity": d.severity.value,
        "filename": d.path,
        "location": {"row": d.start.line, "column": d.start.column},
        "end_location": {"row": d.end.line, "column": d.end.column},
        "cell": d.cell,
        "module": d.module,
        "fix": fix,
        "notes": list(d.notes),
    }


def render_json(diagnostics: Sequence[Diagnostic]) -> str:
    return json.dumps([_as_dict(d) for d in diagnostics], indent=2) + "\n"


def _describe(code: str) -> tuple[str, str, Severity]:
    rule = rule_for(code)
    if rule is not None:
        return rule.name, rule.summary, rule.severity
    tool = tool_code(code)
    return tool.name, tool.summary, tool.severity


_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def render_sarif(diagnostics: Sequence[Diagnostic], root: str) -> str:
    from ema_lint.registry import SOURCE_RULES

    codes = [r.code for r in SOURCE_RULES] + [t.code for t in TOOL_CODES]
    codes = sorted(set(codes) | {d.code for d in diagnostics})
    index = {code: i for i, code in enumerate(codes)}
    rules = []
    for code in codes:
        name, summary, severity = _describe(code)
        rules.append(
            {
                "id": code,
                "name": name,
                "shortDescription": {"text": summary},
                "fullDescription": {"text": summary},
                "help": {"text": f"Run `ema-lint rule {code}` for details."},
                "defaultConfiguration": {"level": _SARIF_LEVEL[severity]},
            }
        )
    results = []
    for d in diagnostics:
        uri = os.path.relpath(os.path.abspath(d.path), root).replace(os.sep, "/")
        result = {
            "ruleId": d.code,
            "ruleIndex": index[d.code],
            "level": _SARIF_LEVEL[d.severity],
            "message": {"text": d.message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": uri, "uriBaseId": "%SRCROOT%"},
                        "region": {
                            "startLine": d.start.line,
                            "startColumn": d.start.column,
                            "endLine": max(d.end.line, d.start.line),
                            "endColumn": max(d.end.column, d.start.column),
                        },
                    }
                }
            ],
        }
        properties = {key: value for key, value in (("module", d.module), ("cell", d.cell)) if value is not None}
        if properties:
            result["properties"] = properties
        results.append(result)
    document = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "ema-lint",
                        "version": __version__,
                        "informationUri": "https://pypi.org/project/ema-lint/",
                        "rules": rules,
                    }
                },
                "originalUriBaseIds": {"%SRCROOT%": {"uri": _file_uri(root)}},
                "results": results,
            }
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def _file_uri(folder: str) -> str:
    return "file://" + os.path.abspath(folder).replace(os.sep, "/").rstrip("/") + "/"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


_GITHUB_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def render_github(diagnostics: Sequence[Diagnostic]) -> str:
    out = []
    for d in diagnostics:
        path = _relative(d.path)
        # a notebook's lines are not lines of its JSON file: such a finding names the file only
        position = () if d.cell is not None else (
            ("line", d.start.line),
            ("col", d.start.column),
            ("endLine", d.end.line),
            ("endColumn", d.end.column),
        )
        properties = ",".join(
            f"{key}={_escape_property(str(value))}"
            for key, value in (("title", f"ema-lint ({d.code})"), ("file", path), *position)
        )
        message = _escape_data(f"{_where(d)}: {d.code} {d.message}")
        out.append(f"::{_GITHUB_COMMAND[d.severity]} {properties}::{message}\n")
    return "".join(out)
