"""The fix loop on bytes: choice of fixes, imports, convergence, verification, byte fidelity."""

from __future__ import annotations

import collections

from fix_rules import (
    BreakSyntax,
    DataToDetach,
    DetachAccumulatedLoss,
    GrowingName,
    LibraryCheckpoint,
    MultiLineInsert,
    ReplaceWithSame,
    ReturnAtModuleLevel,
)

from ema_lint.diagnostics import Applicability, Edit, Fix, Location
from ema_lint.fixer import MAX_ROUNDS, choose_fixes, fix_source
from ema_lint.fixes import apply_edits
from ema_lint.required_imports import add_required_imports
from ema_lint.diagnostics import Diagnostic, RequiredImport, Severity


def _fix(source: bytes, *rules, unsafe: bool = False):
    return fix_source("example.py", source, rules, unsafe=unsafe)


def test_safe_fix_is_applied_with_its_import_and_the_loop_settles() -> None:
    result = _fix(b"import os\n\ntotal = 0\nfor loss in losses:\n    total += loss\n", DetachAccumulatedLoss)
    assert result.fixed == b"import os\nimport torch\n\ntotal = 0\nfor loss in losses:\n    total += loss.detach()\n"
    assert result.applied == collections.Counter({"EMA902": 1})
    assert result.remaining == [] and result.problem is None


def test_import_already_present_is_not_added_again() -> None:
    source = b"import torch.utils.checkpoint\ntotal += loss\n"
    assert _fix(source, DetachAccumulatedLoss).fixed == b"import torch.utils.checkpoint\ntotal += loss.detach()\n"


def test_unsafe_fix_waits_for_the_flag() -> None:
    source = b"y = x.data\n"
    without = _fix(source, DataToDetach)
    assert without.fixed == source and without.applied == collections.Counter()
    assert [d.code for d in without.remaining] == ["EMA903"]
    with_flag = _fix(source, DataToDetach, unsafe=True)
    assert with_flag.fixed == b"from ema_lint.runtime import ema_update\ny = x.detach()\n"
    assert with_flag.remaining == []


def test_display_only_fix_is_never_applied() -> None:
    source = b"checkpoint_seq(blocks, x)\n"
    result = _fix(source, LibraryCheckpoint, unsafe=True)
    assert result.fixed == source and result.problem is None
    assert [d.fix.applicability for d in result.remaining] == [Applicability.DISPLAY_ONLY]


def test_noqa_suppressed_findings_are_not_fixed() -> None:
    source = b"total += loss  # noqa: EMA902\ntotal += other\n"
    assert _fix(source, DetachAccumulatedLoss).fixed == (
        b"import torch\ntotal += loss  # noqa: EMA902\ntotal += other.detach()\n"
    )


def test_fix_that_keeps_coming_back_is_an_error_and_leaves_the_source() -> None:
    source = b"grow = 1\n"
    result = _fix(source, GrowingName)
    assert result.fixed == source
    assert result.problem == f"fixes for EMA905 did not converge in {MAX_ROUNDS} rounds"
    assert result.applied == collections.Counter()
    assert [d.code for d in result.remaining] == ["EMA905"]


def test_fix_that_changes_nothing_is_a_cycle() -> None:
    result = _fix(b"same = 1\n", ReplaceWithSame)
    assert result.problem == "fixes for EMA906 do not converge (they undo each other)"
    assert result.fixed == b"same = 1\n"


def test_fix_that_breaks_parsing_is_rejected() -> None:
    result = _fix(b"breakme = 1\n", BreakSyntax)
    assert result.fixed == b"breakme = 1\n"
    assert result.problem is not None and result.problem.startswith(
        "fix for EMA907 rejected: the fixed source does not parse: "
    )


def test_fix_that_parses_but_does_not_compile_is_rejected() -> None:
    result = _fix(b"pass\n", ReturnAtModuleLevel)
    assert result.fixed == b"pass\n"
    assert result.problem == "fix for EMA908 rejected: the fixed source does not compile: 'return' outside function"


def test_syntax_error_is_reported_and_nothing_is_fixed() -> None:
    result = _fix(b"total += loss\ndef (\n", DetachAccumulatedLoss)
    assert result.fixed == b"total += loss\ndef (\n"
    assert [d.code for d in result.remaining] == ["EMA001"]


def test_crlf_file_keeps_crlf_in_edits_and_imports() -> None:
    source = b'"""Doc."""\r\nimport os\r\n\r\nema.step_ema()\r\ntotal += loss\r\n'
    result = _fix(source, DetachAccumulatedLoss, MultiLineInsert)
    assert result.fixed == (
        b'"""Doc."""\r\nimport os\r\nimport torch\r\n\r\n'
        b"with torch.no_grad():\r\n    ema.update_()\r\ntotal += loss.detach()\r\n"
    )


def test_missing_final_newline_stays_missing() -> None:
    assert _fix(b"import os\ntotal += loss", DetachAccumulatedLoss).fixed == (
        b"import os\nimport torch\ntotal += loss.detach()"
    )


def test_latin1_file_with_coding_line_stays_latin1() -> None:
    source = "# -*- coding: latin-1 -*-\nname = 'café'\ntotal += loss\n".encode("latin-1")
    result = _fix(source, DetachAccumulatedLoss)
    assert result.fixed == (
        "# -*- coding: latin-1 -*-\nimport torch\nname = 'café'\ntotal += loss.detach()\n".encode("latin-1")
    )


def test_bom_is_kept() -> None:
    result = _fix(b"\xef\xbb\xbftotal += loss\n", DetachAccumulatedLoss)
    assert result.fixed == b"\xef\xbb\xbfimport torch\ntotal += loss.detach()\n"


def test_form_feed_and_line_separator_do_not_shift_edits() -> None:
    source = "x = '\u2028'\n\x0c\ntotal += loss\n".encode()
    assert _fix(source, DetachAccumulatedLoss).fixed == (
        "import torch\nx = '\u2028'\n\x0c\ntotal += loss.detach()\n".encode()
    )


def test_overlapping_fixes_wait_for_the_next_round() -> None:
    def diagnostic(code, start, end, content):
        return Diagnostic(
            code, "n", "m", "p", Location(1, start), Location(1, end), Severity.WARNING,
            Fix("t", Applicability.SAFE, (Edit(Location(1, start), Location(1, end), content),)),
        )

    first = diagnostic("EMA902", 1, 5, "a")
    overlapping = diagnostic("EMA903", 3, 8, "b")
    touching = diagnostic("EMA904", 5, 6, "c")
    same_insert_a = diagnostic("EMA905", 9, 9, "x")
    same_insert_b = diagnostic("EMA906", 9, 9, "y")
    duplicate = diagnostic("EMA907", 1, 5, "a")
    chosen = choose_fixes([overlapping, touching, first, same_insert_b, same_insert_a, duplicate], unsafe=False)
    assert [d.code for d in chosen] == ["EMA902", "EMA907", "EMA904", "EMA905"]


def test_new_from_import_joins_a_one_line_statement_of_the_same_module() -> None:
    text = "from ema_lint.runtime import ModelEMA, ema_update as upd\nx = 1\n"
    assert add_required_imports(text, [RequiredImport("ema_lint.runtime", "running_stats_context_fn")], "\n") == (
        "from ema_lint.runtime import ModelEMA, ema_update as upd, running_stats_context_fn\nx = 1\n"
    )


def test_parenthesised_from_import_is_left_alone_and_a_new_line_added() -> None:
    text = "from ema_lint.runtime import (\n    ModelEMA,\n)\nx = 1\n"
    assert add_required_imports(text, [RequiredImport("ema_lint.runtime", "ema_update")], "\n") == (
        "from ema_lint.runtime import (\n    ModelEMA,\n)\nfrom ema_lint.runtime import ema_update\nx = 1\n"
    )


def test_imports_go_after_leading_comments_docstring_and_future_import() -> None:
    # the leading comments hold the shebang, a PEP 263 line or a licence: they stay first
    text = '#!/usr/bin/env python\n"""Doc."""\nfrom __future__ import annotations\n# about x\nx = 1\n'
    assert add_required_imports(text, [RequiredImport("torch")], "\n") == (
        '#!/usr/bin/env python\n"""Doc."""\nfrom __future__ import annotations\nimport torch\n# about x\nx = 1\n'
    )
    assert add_required_imports("# licence\n\n# about x\nx = 1\n", [RequiredImport("torch")], "\n") == (
        "# licence\n\n# about x\nimport torch\nx = 1\n"
    )
    assert add_required_imports("", [RequiredImport("torch")], "\n") == "import torch\n"


def test_import_that_only_type_checkers_see_does_not_count() -> None:
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ema_lint.runtime import ema_update\n"
    try:
        add_required_imports(text, [RequiredImport("ema_lint.runtime", "ema_update")], "\n")
    except ValueError as error:
        assert str(error) == (
            "cannot add `from ema_lint.runtime import ema_update`: `ema_update` is already bound at module level"
        )
    else:
        raise AssertionError("a conditional binding must block the import")


def test_name_bound_to_something_else_blocks_the_fix() -> None:
    source = b"torch = None\ntotal += loss\n"
    result = _fix(source, DetachAccumulatedLoss)
    assert result.fixed == source
    assert result.problem == (
        "fix for EMA902 failed: cannot add `import torch`: `torch` is already bound at module level"
    )


def test_aliased_import_does_not_satisfy_a_plain_one() -> None:
    assert _fix(b"import torch as t\ntotal += loss\n", DetachAccumulatedLoss).fixed == (
        b"import torch as t\nimport torch\ntotal += loss.detach()\n"
    )


def test_apply_edits_counts_lines_as_python_does() -> None:
    text = "a\x0cb\u2028c\nxy\n"
    assert apply_edits(text, [Edit(Location(2, 1), Location(2, 2), "X")]) == "a\x0cb\u2028c\nXy\n"
