"""ema-lint's source rules as a flake8 plugin (entry point `EMA` in `flake8.extension`).

flake8 hands over one file at a time, so the project index holds that file alone:
findings that need facts from sibling modules (a class with BatchNorm defined in another
file) are found by `ema-lint check`, not here. Selection, per-file ignores and `# noqa`
(including `--disable-noqa`) are flake8's own; `[tool.ema-lint]` is not read.
"""

from __future__ import annotations

import ast
import io
import os
import tokenize
from typing import Iterator, Sequence

from ema_lint import __version__
from ema_lint.engine import FileResult, check_source, tool_diagnostic
from ema_lint.project import ProjectIndex, summarize
from ema_lint.registry import SOURCE_RULES


class EmaLintChecker:
    name = "ema-lint"
    version = __version__

    def __init__(self, tree: ast.AST, filename: str, lines: Sequence[str]) -> None:
        # flake8 only calls plugins that take `tree` once the file parsed; the tree itself
        # is not needed, the rules read the file with libcst.
        self.filename = filename
        self.lines = lines

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        source = source_bytes(self.lines)
        module_name = os.path.splitext(os.path.basename(self.filename))[0]
        result = _check(self.filename, source, module_name)
        for diagnostic in result.diagnostics:
            yield (
                diagnostic.start.line,
                diagnostic.start.column - 1,
                f"{diagnostic.code} {diagnostic.message}",
                type(self),
            )


def source_bytes(lines: Sequence[str]) -> bytes:
    """The file's bytes again from the text flake8 decoded: re-encoded in the encoding its
    PEP 263 cookie declares, so the cookie and the bytes agree when libcst parses them."""
    text = "".join(lines)
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(text.encode("utf-8")).readline)
        return text.encode(encoding)
    except (SyntaxError, LookupError, UnicodeEncodeError):
        pass
    try:
        # flake8 reads a file its cookie cannot decode as latin-1; encoding back gives the
        # original bytes, which the engine then reports as unreadable (EMA004).
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _check(path: str, source: bytes, module_name: str) -> FileResult:
    try:
        project = ProjectIndex.from_facts([summarize(module_name, source)])
    except (SyntaxError, ValueError):
        project = ProjectIndex()
    try:
        return check_source(path, source, SOURCE_RULES, project, module_name, honour_noqa=False)
    except Exception as error:  # a rule bug must cost this file a finding, not flake8's whole run
        return FileResult(path, [tool_diagnostic("EMA005", path, f"internal error: {type(error).__name__}: {error}")])
