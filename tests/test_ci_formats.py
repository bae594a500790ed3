"""ruff's CLI surface on `check`: every output format exactly, SARIF valid against the OASIS
2.1.0 schema with awkward file names, --output-file, --statistics, --fix/--diff and their
exit codes, file listing and settings, exclusion flags, and `rule` by name or as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from click.testing import CliRunner

from ema_lint.cli import main

# tests/data/sarif-schema-2.1.0.json: the OASIS SARIF TC's published schema
# (github.com/oasis-tcs/sarif-spec, sarif-2.1/schema/, commit e058381), kept as test data
SARIF_SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"

TRAINING = """\
total = 0
for x, y in loader:
    loss = model(x).sum()
    loss.backward()
    total += loss
"""
MESSAGE = "`total` accumulates `loss` with its autograd graph, so every step's graph stays in memory"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pyproject.toml").write_text("[tool.ema-lint]\n")
    (tmp_path / "train.py").write_text(TRAINING)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check(*args: str):
    return CliRunner().invoke(main, ["check", "--no-cache", "-j", "1", *args])


@pytest.mark.parametrize(
    ("output_format", "expected"),
    [
        ("pylint", f"train.py:5: [EMA202] {MESSAGE}\n"),
        (
            "grouped",
            f"train.py:\n  5:5 EMA202 [*] {MESSAGE}\n\n"
            "Found 1 finding.\n[*] 1 fixable with `ema-lint fix --write`.\n",
        ),
        (
            "azure",
            "##vso[task.logissue type=error;sourcepath=train.py;linenumber=5;columnnumber=5;code=EMA202;]"
            f"{MESSAGE}\n",
        ),
        (
            "full",
            f"train.py:5:5: EMA202 [*] {MESSAGE}\n"
            "  |\n4 |     loss.backward()\n5 |     total += loss\n  |     ^^^^^^^^^^^^^\n  |\n"
            "  help: Accumulate `loss.detach()`\n"
            "Found 1 finding.\n[*] 1 fixable with `ema-lint fix --write`.\n",
        ),
    ],
)
def test_line_formats(project: Path, output_format: str, expected: str) -> None:
    result = _check("--output-format", output_format)
    assert (result.exit_code, result.output) == (1, expected)


def test_json_lines_is_one_json_record_per_finding(project: Path) -> None:
    (project / "second.py").write_text(TRAINING)
    lines = _check("--output-format", "json-lines").output.splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["filename"], r["code"], r["location"]) for r in records] == [
        ("second.py", "EMA202", {"row": 5, "column": 5}),
        ("train.py", "EMA202", {"row": 5, "column": 5}),
    ]
    assert records[0] == json.loads(_check("--output-format", "json", "second.py").output)[0]


def test_gitlab_code_quality(project: Path) -> None:
    (issue,) = json.loads(_check("--output-format", "gitlab").output)
    assert issue == {
        "description": f"EMA202 {MESSAGE}",
        "check_name": "EMA202",
        "fingerprint": issue["fingerprint"],
        "severity": "major",
        "location": {"path": "train.py", "positions": {"begin": {"line": 5, "column": 5}, "end": {"line": 5, "column": 18}}},
    }
    # the fingerprint follows the finding, not its line; two equal findings differ
    (project / "train.py").write_text("import os\n" + TRAINING + TRAINING.replace("total = 0\n", ""))
    moved, again = json.loads(_check("--output-format", "gitlab").output)
    assert moved["fingerprint"] == issue["fingerprint"] != again["fingerprint"]


def test_junit_is_well_formed_xml(project: Path) -> None:
    (project / "odd <&> name.py").write_text(TRAINING)
    output = _check("--output-format", "junit").output
    suites = ElementTree.fromstring(output)
    assert suites.get("tests") == suites.get("failures") == "2"
    names = sorted(suite.get("name") for suite in suites)
    assert names == ["odd <&> name.py", "train.py"]
    case = suites.find("testsuite/testcase")
    assert case.get("name") == "ema-lint.EMA202" and case.get("line") == "5"
    assert case.find("failure").get("message") == MESSAGE


def test_junit_of_a_clean_run_has_one_passing_case(project: Path) -> None:
    (project / "train.py").write_text("x = 1\n")
    suites = ElementTree.fromstring(_check("--output-format", "junit").output)
    assert suites.get("failures") == "0" and len(suites.findall("testsuite/testcase")) == 1


def test_rdjson_offers_the_safe_fix_as_a_suggestion(project: Path) -> None:
    document = json.loads(_check("--output-format", "rdjson").output)
    assert document["source"]["name"] == "ema-lint"
    (item,) = document["diagnostics"]
    assert item["code"] == {"value": "EMA202"} and item["severity"] == "ERROR"
    assert item["location"]["path"] == "train.py"
    assert item["suggestions"] == [{"range": {"start": {"line": 5, "column": 14}, "end": {"line": 5, "column": 18}}, "text": "loss.detach()"}]


def test_sarif_is_valid_with_awkward_file_names(project: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    names = ["a b.py", "100%20.py", "x#y.py", "é.py"]
    for name in names:
        (project / name).write_text(TRAINING.replace("    total += loss", "    s = '😀'; total += loss"))
    (project / "broken.py").write_text("def f(:\n")
    document = json.loads(_check("--output-format", "sarif").output)
    jsonschema.validate(document, json.loads(SARIF_SCHEMA.read_text()))
    (run,) = document["runs"]
    uris = sorted(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"])
    assert uris == sorted(["100%2520.py", "a%20b.py", "train.py", "x%23y.py", "%C3%A9.py"])
    # a column counts code points: `total` after "    s = '😀'; " is the 14th (the 15th in UTF-16)
    first = next(r for r in run["results"] if r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "a%20b.py")
    assert first["locations"][0]["physicalLocation"]["region"]["startColumn"] == 14 and run["columnKind"] == "unicodeCodePoints"
    (notification,) = run["invocations"][0]["toolExecutionNotifications"]
    assert notification["descriptor"]["id"] == "EMA001"


def test_output_file_gets_the_report(project: Path) -> None:
    result = _check("--output-format", "json", "--output-file", "reports/ema.json")
    assert (result.exit_code, result.output) == (1, "")
    (record,) = json.loads((project / "reports" / "ema.json").read_text())
    assert record["code"] == "EMA202"


def test_statistics_in_json(project: Path) -> None:
    result = _check("--statistics", "--output-format", "json")
    assert json.loads(result.output) == [
        {"code": "EMA202", "name": "loss-accumulated-with-graph", "count": 1, "fixable": True, "fixable_count": 1}
    ]


def test_check_fix_writes_and_reports_what_remains(project: Path) -> None:
    result = _check("--fix", "--show-fixes")
    assert result.exit_code == 0, result.output
    assert "total += loss.detach()" in (project / "train.py").read_text()
    assert result.output == (
        "All checks passed!\n\nFixed 1 finding:\n- train.py:\n    1 × EMA202 (loss-accumulated-with-graph)\n"
    )
    assert _check("--fix").exit_code == 0


def test_check_fix_exit_non_zero_on_fix(project: Path) -> None:
    assert _check("--fix", "--exit-non-zero-on-fix", "-q").exit_code == 1
    assert _check("--fix", "--exit-non-zero-on-fix", "-q").exit_code == 0


def test_check_diff_writes_nothing(project: Path) -> None:
    result = _check("--diff")
    assert result.exit_code == 1
    assert "-    total += loss\n+    total += loss.detach()\n" in result.output
    assert (project / "train.py").read_text() == TRAINING


def test_check_fix_from_standard_input_prints_the_fixed_source(project: Path) -> None:
    result = CliRunner().invoke(main, ["check", "--fix", "--stdin-filename", "train.py"], input=TRAINING)
    assert result.exit_code == 0
    assert result.stdout.endswith("    total += loss.detach()\n")


def test_bad_configuration_exits_2_even_with_exit_zero(project: Path) -> None:
    (project / "pyproject.toml").write_text("[tool.ema-lint]\nselect = 3\n")
    assert _check().exit_code == 2
    assert _check("--exit-zero").exit_code == 2


def test_version_short_flag() -> None:
    result = CliRunner().invoke(main, ["-V"])
    assert result.exit_code == 0 and result.output.startswith("ema-lint, version ")


def test_show_files_and_settings(project: Path) -> None:
    (project / "sub").mkdir()
    (project / "sub" / "ema-lint.toml").write_text('ignore = ["EMA301"]\nfail-on = "error"\n')
    (project / "sub" / "m.py").write_text("x = 1\n")
    files = _check("--show-files").output.splitlines()
    assert files == [str(project / "sub" / "m.py"), str(project / "train.py")]
    settings = _check("--show-settings", "sub/m.py").output
    assert f"configuration: {project / 'sub' / 'ema-lint.toml'}" in settings
    assert "ignore: ['EMA301']" in settings and "fail-on: error" in settings and "'EMA301'" not in settings.split("rules:")[1]


def test_extend_exclude_force_exclude_and_gitignore(project: Path) -> None:
    (project / "generated").mkdir()
    (project / "generated" / "g.py").write_text(TRAINING)
    (project / "ignored.py").write_text(TRAINING)
    (project / ".gitignore").write_text("ignored.py\n")
    subprocess.run(["git", "init", "-q", str(project)], check=True)

    def checked(*args: str) -> list[str]:
        return sorted(os.path.relpath(line) for line in _check("--show-files", *args).output.splitlines())

    assert checked() == ["generated/g.py", "train.py"]
    assert checked("--extend-exclude", "generated") == ["train.py"]
    assert checked("--no-respect-gitignore") == ["generated/g.py", "ignored.py", "train.py"]
    # a file named on the command line is checked unless --force-exclude (pre-commit)
    assert checked("ignored.py", "generated/g.py", "--extend-exclude", "generated") == ["generated/g.py", "ignored.py"]
    assert checked("ignored.py", "generated/g.py", "--extend-exclude", "generated", "--force-exclude") == []


def test_rule_by_name_and_as_json() -> None:
    by_name = CliRunner().invoke(main, ["rule", "loss-accumulated-with-graph"])
    assert by_name.exit_code == 0 and by_name.output.startswith("# loss-accumulated-with-graph (EMA202)")
    record = json.loads(CliRunner().invoke(main, ["rule", "EMA202", "--output-format", "json"]).output)
    assert record["code"] == "EMA202" and record["explanation"] == by_name.output
    assert record["fix"] == "Fix is sometimes available."
    listing = json.loads(CliRunner().invoke(main, ["rule", "--all", "--output-format", "json"]).output)
    assert {"EMA001", "EMA202", "EMA301"} <= {entry["code"] for entry in listing}


def test_a_file_name_that_is_not_utf8_is_reported_in_every_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.ema-lint]\n")
    name = os.fsdecode(b"bad\xff.py")
    (tmp_path / name).write_text(TRAINING)
    sarif = json.loads(_check("--output-format", "sarif").output)
    (result,) = sarif["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "bad%FF.py"
    assert _check("--output-format", "gitlab").exit_code == 1
    assert _check("--output-format", "pylint", "-o", "out.txt").exit_code == 1
    assert (tmp_path / "out.txt").read_bytes().startswith(b"bad\xff.py:5: [EMA202]")


def test_pylint_lines_cannot_be_forged_by_a_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.ema-lint]\n")
    (tmp_path / "a.py\nforged.py:99: [EMA999] fake\x1b[31m.py").write_text(TRAINING)
    (line,) = _check("--output-format", "pylint").output.splitlines()
    assert "\x1b" not in line and line.startswith("a.py\\x0aforged.py:99: [EMA999] fake\\x1b[31m.py:5: [EMA202]")


def test_a_notebook_finding_names_its_cell_not_a_line_of_the_json(project: Path) -> None:
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Training"]},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": TRAINING.splitlines(True)},
    ]
    notebook = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (project / "train.py").unlink()
    (project / "train.ipynb").write_text(json.dumps(notebook))
    (result,) = json.loads(_check("--output-format", "sarif").output)["runs"][0]["results"]
    (location,) = result["locations"]
    assert "region" not in location["physicalLocation"]
    assert result["message"]["text"].startswith("cell 1, line 5, column 5: ")
    (issue,) = json.loads(_check("--output-format", "gitlab").output)
    assert issue["location"] == {"path": "train.ipynb", "lines": {"begin": 1}}
    (item,) = json.loads(_check("--output-format", "rdjson").output)["diagnostics"]
    assert "range" not in item["location"]
    assert _check("--output-format", "pylint").output.startswith("train.ipynb:cell 1:5: [EMA202]")


def test_check_diff_still_fails_on_a_bad_configuration(project: Path) -> None:
    (project / "pyproject.toml").write_text("[tool.ema-lint]\nselect = 3\n")
    result = _check("--diff")
    assert result.exit_code == 2 and "EMA002" in result.stderr


def test_force_exclude_skips_the_folders_a_walk_skips(project: Path) -> None:
    for folder in ("dist", ".hidden", "env"):
        (project / folder).mkdir()
        (project / folder / "x.py").write_text(TRAINING)
    (project / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    named = ["dist/x.py", ".hidden/x.py", "env/x.py", "train.py"]
    assert _check("--show-files", "--force-exclude", *named).output.splitlines() == [str(project / "train.py")]
    assert len(_check("--show-files", *named).output.splitlines()) == 4


def test_exit_zero_wins_over_exit_non_zero_on_fix(project: Path) -> None:
    assert _check("--fix", "--exit-non-zero-on-fix", "--exit-zero", "-q").exit_code == 0
