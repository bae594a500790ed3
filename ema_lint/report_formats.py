"""Findings in the formats other tools read: JSON and JSON lines (this tool's schema,
`docs/output-formats.md`), SARIF 2.1.0, GitHub Actions and Azure Pipelines workflow commands,
GitLab Code Quality, JUnit XML, pylint lines and reviewdog's rdjson. Pure functions from data
to strings; each takes the folder paths are reported relative to."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import urllib.parse
from typing import Sequence
from xml.sax.saxutils import quoteattr

from ema_lint import __version__
from ema_lint.diagnostics import Diagnostic, Severity
from ema_lint.registry import SOURCE_RULES, TOOL_CODES, rule_for, tool_code
from ema_lint.text import printable

# Version of the JSON and JSON-lines record schema: fields are only ever added within a version.
JSON_SCHEMA_VERSION = 1


def relative(path: str, root: str) -> str:
    """`path` relative to `root` with `/` separators, or as given when it lies outside `root`
    or is a pseudo path (`<stdin>`)."""
    if path.startswith("<"):
        return path
    inside = os.path.relpath(os.path.abspath(path), root)
    return path if inside.startswith("..") else inside.replace(os.sep, "/")


def _record(d: Diagnostic) -> dict:
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


def render_json(diagnostics: Sequence[Diagnostic], root: str) -> str:
    return json.dumps([_record(d) for d in diagnostics], indent=2) + "\n"


def render_json_lines(diagnostics: Sequence[Diagnostic], root: str) -> str:
    return "".join(json.dumps(_record(d)) + "\n" for d in diagnostics)


def render_pylint(diagnostics: Sequence[Diagnostic], root: str) -> str:
    # pylint's `parseable` shape, which editors and CI log parsers match: no column; a name or
    # message cannot forge a line or reach the terminal as an escape sequence
    return "".join(
        f"{printable(relative(d.path, root), newline=True)}:{_line(d)}: [{d.code}] {printable(d.message, newline=True)}\n"
        for d in diagnostics
    )


def _line(d: Diagnostic) -> str:
    # a notebook's lines count within a cell, not in the `.ipynb` file
    return f"cell {d.cell}:{d.start.line}" if d.cell is not None else str(d.start.line)


def _describe(code: str) -> tuple[str, str, Severity]:
    rule = rule_for(code)
    if rule is not None:
        return rule.name, rule.summary, rule.severity
    tool = tool_code(code)
    return tool.name, tool.summary, tool.severity


def is_tool_problem(d: Diagnostic) -> bool:
    """A finding about the tool or its input (EMA0xx) rather than about the checked code."""
    return rule_for(d.code) is None


_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def _sarif_uri(path: str, root: str) -> tuple[str, bool]:
    """A SARIF artifact URI for `path`: percent-encoded (a `#`, `%` or space in a name must
    not change which file it names), relative to `root` when inside it. Second item: whether
    it is relative."""
    absolute = pathlib.Path(os.path.abspath(path))
    inside = os.path.relpath(absolute, root)
    if inside.startswith(".."):
        return "file://" + urllib.parse.quote(absolute.as_posix(), safe="/", errors="surrogateescape"), False
    # a name that is not UTF-8 (`bad\xff.py`, held as a surrogate) keeps its raw bytes
    return urllib.parse.quote(pathlib.PurePath(inside).as_posix(), safe="/", errors="surrogateescape"), True


def _sarif_location(d: Diagnostic, root: str) -> dict:
    uri, is_relative = _sarif_uri(d.path, root)
    artifact = {"uri": uri, "uriBaseId": "%SRCROOT%"} if is_relative else {"uri": uri}
    if d.cell is not None:
        # a notebook's lines are not lines of its JSON file: the file only, the cell in the text
        return {"physicalLocation": {"artifactLocation": artifact}, "message": {"text": _cell_position(d)}}
    return {
        "physicalLocation": {
            "artifactLocation": artifact,
            "region": {
                "startLine": d.start.line,
                "startColumn": d.start.column,
                "endLine": max(d.end.line, d.start.line),
                "endColumn": max(d.end.column, d.start.column) if d.end.line <= d.start.line else d.end.column,
            },
        }
    }


def _sarif_rule(code: str) -> dict:
    from ema_lint.docs import rule_doc

    name, summary, severity = _describe(code)
    return {
        "id": code,
        "name": name,
        "shortDescription": {"text": summary},
        "fullDescription": {"text": summary},
        # code scanning shows `help` on every alert: the rule's whole documentation
        "help": {"text": f"{summary}. Run `ema-lint rule {code}` for the full documentation.", "markdown": rule_doc(code)},
        "defaultConfiguration": {"level": _SARIF_LEVEL[severity]},
        "properties": {"tags": ["ema-lint", "tool" if rule_for(code) is None else "pytorch"]},
    }


def render_sarif(diagnostics: Sequence[Diagnostic], root: str) -> str:
    """SARIF 2.1.0 as GitHub code scanning reads it. Findings about the checked code are
    results; problems of the tool or its input (unparsable files, bad configuration, a
    checker failure) are tool execution notifications, which code scanning shows as such."""
    codes = sorted({r.code for r in SOURCE_RULES} | {d.code for d in diagnostics if not is_tool_problem(d)})
    index = {code: i for i, code in enumerate(codes)}
    tool_codes = [t.code for t in TOOL_CODES]
    results = []
    notifications = []
    for d in diagnostics:
        properties = {key: value for key, value in (("module", d.module), ("cell", d.cell)) if value is not None}
        if is_tool_problem(d):
            notification = {
                "descriptor": {"id": d.code, "index": tool_codes.index(d.code)},
                "level": _SARIF_LEVEL[d.severity],
                "message": {"text": d.message},
                "locations": [_sarif_location(d, root)],
            }
            notifications.append(notification | ({"properties": properties} if properties else {}))
            continue
        result = {
            "ruleId": d.code,
            "ruleIndex": index[d.code],
            "level": _SARIF_LEVEL[d.severity],
            "message": {"text": _in_cell(d, d.message)},
            "locations": [_sarif_location(d, root)],
        }
        results.append(result | ({"properties": properties} if properties else {}))
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
                        "rules": [_sarif_rule(code) for code in codes],
                        "notifications": [
                            {
                                "id": tool.code,
                                "name": tool.name,
                                "shortDescription": {"text": tool.summary},
                                "defaultConfiguration": {"level": _SARIF_LEVEL[tool.severity]},
                            }
                            for tool in TOOL_CODES
                        ],
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": not any(d.code == "EMA005" for d in diagnostics),
                        "toolExecutionNotifications": notifications,
                    }
                ],
                # columns count characters (code points), not SARIF's default UTF-16 units
                "columnKind": "unicodeCodePoints",
                "originalUriBaseIds": {"%SRCROOT%": {"uri": pathlib.Path(os.path.abspath(root)).as_uri().rstrip("/") + "/"}},
                "results": results,
            }
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def _cell_position(d: Diagnostic) -> str:
    return f"cell {d.cell}, line {d.start.line}, column {d.start.column}"


def _in_cell(d: Diagnostic, message: str) -> str:
    """`message`, led by the notebook cell position for formats whose lines are file lines."""
    return f"{_cell_position(d)}: {message}" if d.cell is not None else message


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _editor_position(d: Diagnostic) -> tuple[tuple[str, int], ...]:
    # a notebook's lines are not lines of its JSON file: such a finding names the file only
    if d.cell is not None:
        return ()
    return (("line", d.start.line), ("col", d.start.column), ("endLine", d.end.line), ("endColumn", d.end.column))


def _where(d: Diagnostic, root: str) -> str:
    cell = f"cell {d.cell}:" if d.cell is not None else ""
    return f"{relative(d.path, root)}:{cell}{d.start.line}:{d.start.column}"


_GITHUB_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def render_github(diagnostics: Sequence[Diagnostic], root: str) -> str:
    out = []
    for d in diagnostics:
        properties = ",".join(
            f"{key}={_escape_property(str(value))}"
            for key, value in (("title", f"ema-lint ({d.code})"), ("file", relative(d.path, root)), *_editor_position(d))
        )
        message = _escape_data(f"{_where(d, root)}: {d.code} {d.message}")
        out.append(f"::{_GITHUB_COMMAND[d.severity]} {properties}::{message}\n")
    return "".join(out)


_AZURE_TYPE = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "warning"}


def _escape_azure(text: str) -> str:
    # Azure Pipelines' logging-command escapes; `;` and `]` end a property
    return _escape_data(text).replace(";", "%3B").replace("]", "%5D")


def render_azure(diagnostics: Sequence[Diagnostic], root: str) -> str:
    out = []
    for d in diagnostics:
        position = {"line": "linenumber", "col": "columnnumber"}
        properties = "".join(
            f"{key}={_escape_azure(str(value))};"
            for key, value in (
                ("type", _AZURE_TYPE[d.severity]),
                ("sourcepath", relative(d.path, root)),
                *((position[k], v) for k, v in _editor_position(d) if k in position),
                ("code", d.code),
            )
        )
        out.append(f"##vso[task.logissue {properties}]{_escape_data(d.message)}\n")
    return "".join(out)


_GITLAB_SEVERITY = {Severity.ERROR: "major", Severity.WARNING: "minor", Severity.INFO: "info"}


def render_gitlab(diagnostics: Sequence[Diagnostic], root: str) -> str:
    """GitLab Code Quality: a fingerprint that stays the same while the finding does (not its
    line, which edits above it move) and differs between equal findings in one file."""
    seen: collections.Counter[str] = collections.Counter()
    issues = []
    for d in diagnostics:
        path = relative(d.path, root)
        identity = "\0".join((path, d.code, d.message, d.module or "", str(d.cell or "")))
        fingerprint = hashlib.sha256(f"{identity}\0{seen[identity]}".encode("utf-8", "surrogateescape")).hexdigest()
        seen[identity] += 1
        # a notebook finding names its cell in the text and points at the file's first line
        location = (
            {"path": path, "lines": {"begin": 1}}
            if d.cell is not None
            else {
                "path": path,
                "positions": {
                    "begin": {"line": d.start.line, "column": d.start.column},
                    "end": {"line": d.end.line, "column": d.end.column},
                },
            }
        )
        issues.append(
            {
                "description": _in_cell(d, f"{d.code} {d.message}"),
                "check_name": d.code,
                "fingerprint": fingerprint,
                "severity": _GITLAB_SEVERITY[d.severity],
                "location": location,
            }
        )
    return json.dumps(issues, indent=2) + "\n"


def render_junit(diagnostics: Sequence[Diagnostic], root: str) -> str:
    """JUnit XML: one test suite per file, one failing test case per finding; a clean run is
    one passing case, so CI dashboards show that the check ran."""
    by_file: dict[str, list[Diagnostic]] = {}
    for d in diagnostics:
        by_file.setdefault(relative(d.path, root), []).append(d)
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    total = max(1, len(diagnostics))
    out.append(f'<testsuites name="ema-lint" tests="{total}" failures="{len(diagnostics)}" errors="0">\n')
    if not diagnostics:
        out.append('  <testsuite name="ema-lint" tests="1" disabled="0" errors="0" failures="0">\n')
        out.append('    <testcase name="No findings" classname="ema-lint"/>\n  </testsuite>\n')
    for path, found in by_file.items():
        attribute = _xml_attribute(path)
        out.append(
            f'  <testsuite name={attribute} tests="{len(found)}" disabled="0" errors="0" failures="{len(found)}" package="ema-lint">\n'
        )
        for d in found:
            where = _cell_position(d) if d.cell is not None else f"line {d.start.line}, col {d.start.column}"
            # a notebook's lines are not lines of its file: no line attribute then
            position = f'line="{d.start.line}" column="{d.start.column}"' if d.cell is None else ""
            out.append(
                f"    <testcase name={_xml_attribute('ema-lint.' + d.code)} classname={attribute} {position}".rstrip()
                + ">\n"
                f"      <failure message={_xml_attribute(d.message)}>{_xml_text(f'{where}, {d.message}')}</failure>\n"
                "    </testcase>\n"
            )
        out.append("  </testsuite>\n")
    out.append("</testsuites>\n")
    return "".join(out)


def _xml_attribute(text: str) -> str:
    return quoteattr(_xml_characters(text))


def _xml_text(text: str) -> str:
    return _xml_characters(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml_characters(text: str) -> str:
    # XML 1.0 cannot hold most control characters even escaped: show them as `\x1b`
    return "".join(c if c in "\t\n\r" or ord(c) >= 0x20 else f"\\x{ord(c):02x}" for c in text)


_RDJSON_SEVERITY = {Severity.ERROR: "ERROR", Severity.WARNING: "WARNING", Severity.INFO: "INFO"}


def render_rdjson(diagnostics: Sequence[Diagnostic], root: str) -> str:
    """reviewdog's Diagnostic Format; a safe fix's edits are its suggestions."""
    items = []
    for d in diagnostics:
        location: dict = {"path": relative(d.path, root)}
        if d.cell is None:
            location["range"] = {
                "start": {"line": d.start.line, "column": d.start.column},
                "end": {"line": d.end.line, "column": d.end.column},
            }
        item = {
            "message": _in_cell(d, d.message),
            "location": location,
            "code": {"value": d.code},
            "severity": _RDJSON_SEVERITY[d.severity],
        }
        if d.fixable and d.cell is None and not d.fix.imports:
            item["suggestions"] = [
                {
                    "range": {
                        "start": {"line": e.start.line, "column": e.start.column},
                        "end": {"line": e.end.line, "column": e.end.column},
                    },
                    "text": e.content,
                }
                for e in d.fix.edits
            ]
        items.append(item)
    document = {"source": {"name": "ema-lint", "url": "https://pypi.org/project/ema-lint/"}, "severity": "ERROR", "diagnostics": items}
    return json.dumps(document, indent=2) + "\n"


RENDERERS = {
    "json": render_json,
    "json-lines": render_json_lines,
    "sarif": render_sarif,
    "github": render_github,
    "azure": render_azure,
    "gitlab": render_gitlab,
    "junit": render_junit,
    "pylint": render_pylint,
    "rdjson": render_rdjson,
}
