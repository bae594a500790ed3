"""Which sources could crash libcst's native parser, and the stdlib-first parse never gives it one."""

from __future__ import annotations

from pathlib import Path

import pytest

from ema_lint.analysis.syntax import may_crash_libcst, parse_any

CHAINS = {
    "boolean operands": lambda n: "x = " + " and ".join(["a"] * n),
    "unary operators": lambda n: "x = " + "-" * n + "a",
    "adjacent strings": lambda n: "x = " + " ".join(["'a'"] * n),
    "lambdas": lambda n: "x = " + "lambda: " * n + "a",
    "attributes": lambda n: "x = a" + ".b" * n,
}


@pytest.mark.parametrize("chain", CHAINS.values(), ids=CHAINS.keys())
def test_a_chain_thousands_deep_is_flagged_and_a_short_one_is_not(chain) -> None:
    assert may_crash_libcst(chain(3000).encode())
    assert not may_crash_libcst(chain(50).encode())


@pytest.mark.parametrize(
    "source",
    [
        "if " + " or ".join(["a"] * 3000) + ":\n    pass\n",
        "def f():\n    for x in range(3):\n        y = " + "+".join(["a"] * 3000) + "\n",
        "@decorator(" + " and ".join(["a"] * 3000) + ")\ndef f():\n    pass\n",
        "match x:\n    case 1:\n        y = " + " and ".join(["a"] * 3000) + "\n",
    ],
    ids=["compound header", "nested body", "decorator", "match case"],
)
def test_deep_statements_are_found_wherever_they_sit(source: str) -> None:
    assert may_crash_libcst(source.encode())


def test_long_flat_literals_are_not_deep() -> None:
    """Arguments, elements and keys are read in a loop; measured safe at 30,000."""
    table = "x = {" + ", ".join(f"'k{i}': [{i}, {i}]" for i in range(5000)) + "}\n"
    call = "y = f(" + ", ".join(f"a{i}=b.c({i})" for i in range(5000)) + ")\n"
    assert not may_crash_libcst((table + call).encode())


def test_long_strings_and_docstrings_are_one_level() -> None:
    docstring = '"""' + "word " * 5000 + '"""\n'
    assert not may_crash_libcst((docstring + "x = '" + "y" * 20000 + "'\n").encode())


def test_real_code_is_not_flagged() -> None:
    """No file of torch, timm or transformers is flagged either (5,449 files, measured)."""
    sources = sorted((Path(__file__).parents[1] / "ema_lint").rglob("*.py"))
    assert sources
    assert [p.name for p in sources if may_crash_libcst(p.read_bytes())] == []


def test_a_file_only_libcst_reads_is_judged_by_its_tokens() -> None:
    newer = "type Alias = int\n"
    assert not may_crash_libcst((newer + "x = 1\n" * 1000).encode())
    assert may_crash_libcst((newer + "x = " + " and ".join(["a"] * 3000) + "\n").encode())
    assert may_crash_libcst((newer + "x = " + "(" * 300 + ")" * 300 + "\n" + "y = 1\n" * 500).encode())


def test_the_libcst_fallback_is_refused_where_it_could_crash() -> None:
    newer = "type Alias = int\n"
    assert parse_any(newer + "x = 1\n") is not None
    with pytest.raises(SyntaxError):
        parse_any(newer + "x = " + " and ".join(["a"] * 15000) + "\n")


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_ending_is_measured(newline: str) -> None:
    deep = "x = " + " and ".join(["a"] * 3000)
    assert not may_crash_libcst(newline.join(["x = 1", "y = 2", "def f():", "    return 3", ""]).encode())
    assert may_crash_libcst(newline.join(["x = 1", "y = 2", deep, ""]).encode())


def test_items_of_a_literal_are_not_depth_in_a_file_only_libcst_reads() -> None:
    """A 3.12 file with a long class-weight list keeps its facts (libcst reads items in a loop)."""
    newer = "type Alias = int\n"
    weights = "WEIGHTS = [" + ", ".join(f"{i}.5" for i in range(2000)) + "]\n"
    call = "y = f(" + ", ".join(f"a{i}=b.c({i})" for i in range(2000)) + ")\n"
    assert not may_crash_libcst((newer + weights + call).encode())
    assert parse_any(newer + weights) is not None


def test_an_elif_chain_is_depth_in_a_file_only_libcst_reads() -> None:
    """libcst nests each `elif` in the one before; the reference parser stops at about 5,000."""
    newer = "type Alias = int\nif a:\n    pass\n"
    assert may_crash_libcst((newer + "elif a:\n    pass\n" * 10000).encode())
    assert not may_crash_libcst((newer + "elif a:\n    pass\n" * 300).encode())
