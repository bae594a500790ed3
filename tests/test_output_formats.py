"""Every output format, exactly, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ema_lint.cli import main


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pyproject.toml").write_text("[tool.ema-lint]\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "broken.py").write_text("x = 1\ndef f(:\n    pass\n")
    (tmp_path / "pkg" / "clean.py").write_text("y = 2\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(*args: str):
    return CliRunner().invoke(main, ["check", "--no-cache", *args])


def test_text(project: Path) -> None:
    result = _run()
    assert result.exit_code == 1
    assert result.output == "pkg/broken.py:2:7: EMA001 cannot parse: invalid syntax\nFound 1 finding.\n"


def test_text_with_source_frame(project: Path) -> None:
    result = _run("--show-source", "--quiet")
    assert result.output == (
        "pkg/broken.py:2:7: EMA001 cannot parse: invalid syntax\n"
        "  |\n"
        "1 | x = 1\n"
        "2 | def f(:\n"
        "  |       ^\n"
        "3 |     pass\n"
        "  |\n"
    )


def test_statistics_replace_the_findings(project: Path) -> None:
    result = _run("--output-format", "concise", "--statistics")
    assert result.output == (
        "    1\tEMA001\t   \tsyntax-error\n"
        "Found 1 finding.\n"
    )


def test_json(project: Path) -> None:
    result = _run("--output-format", "json")
    assert json.loads(result.output) == [
        {
            "code": "EMA001",
            "name": "syntax-error",
            "message": "cannot parse: invalid syntax",
            "severity": "error",
            "filename": "pkg/broken.py",
            "location": {"row": 2, "column": 7},
            "end_location": {"row": 2, "column": 7},
            "cell": None,
            "module": None,
            "fix": None,
            "notes": [],
        }
    ]


def test_github_annotations(project: Path) -> None:
    result = _run("--output-format", "github")
    assert result.output == (
        "::error title=ema-lint (EMA001),file=pkg/broken.py,line=2,col=7,endLine=2,endColumn=7"
        "::pkg/broken.py:2:7: EMA001 cannot parse: invalid syntax\n"
    )


def test_sarif_has_the_shape_code_scanning_accepts(project: Path) -> None:
    document = json.loads(_run("--output-format", "sarif").output)
    assert document["version"] == "2.1.0"
    assert document["$schema"].endswith("sarif-2.1.0.json")
    (run,) = document["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "ema-lint" and driver["version"]
    ids = [rule["id"] for rule in driver["rules"]]
    assert ids == sorted(set(ids)) and "EMA202" in ids
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
        assert rule["help"]["markdown"].startswith(f"# {rule['name']} ({rule['id']})")
    # an unparsable file is the tool's problem, not a finding about the code
    assert run["results"] == []
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is True
    (notification,) = invocation["toolExecutionNotifications"]
    descriptors = [n["id"] for n in driver["notifications"]]
    assert descriptors[notification["descriptor"]["index"]] == notification["descriptor"]["id"] == "EMA001"
    assert notification["level"] == "error" and notification["message"]["text"] == "cannot parse: invalid syntax"
    (location,) = notification["locations"]
    physical = location["physicalLocation"]
    assert physical["artifactLocation"] == {"uri": "pkg/broken.py", "uriBaseId": "%SRCROOT%"}
    assert physical["region"] == {"startLine": 2, "startColumn": 7, "endLine": 2, "endColumn": 7}
    assert run["columnKind"] == "unicodeCodePoints"
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"].startswith("file:///")


def test_clean_tree_exits_zero(project: Path) -> None:
    result = _run("pkg/clean.py")
    assert (result.exit_code, result.output) == (0, "All checks passed!\n")


def test_exit_codes(project: Path) -> None:
    assert _run().exit_code == 1
    assert _run("--exit-zero").exit_code == 0
    assert _run("--select", "NOPE").exit_code == 2
    assert _run("--ignore", "EMA001").exit_code == 0


def test_github_escapes_properties_and_data() -> None:
    from ema_lint.diagnostics import Diagnostic, Location, Severity
    from ema_lint.report_formats import render_github

    d = Diagnostic("EMA001", "syntax-error", "100% bad\nline", "a,b:c.py", Location(1, 1), Location(1, 2), Severity.WARNING)
    assert render_github([d], ".") == (
        "::warning title=ema-lint (EMA001),file=a%2Cb%3Ac.py,line=1,col=1,endLine=1,endColumn=2"
        "::a,b:c.py:1:1: EMA001 100%25 bad%0Aline\n"
    )


def test_no_color_and_non_tty_output_has_no_escape_codes(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in _run("--show-source").output


def test_control_characters_are_shown_escaped_in_text_output() -> None:
    from ema_lint.diagnostics import Diagnostic, Location, Severity
    from ema_lint.render import render_concise

    finding = Diagnostic(
        "EMA202", "loss-accumulated-with-graph", "`stats['\x1b[2J']` accumulates `loss`", "a\x1b]0;x\x07\n.py",
        Location(1, 1), Location(1, 2), Severity.ERROR,
    )
    assert render_concise([finding]) == "a\\x1b]0;x\\x07\\x0a.py:1:1: EMA202 `stats['\\x1b[2J']` accumulates `loss`\n"
