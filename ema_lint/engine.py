"""One file's check: bytes -> pre-filter -> one batched traversal -> `# noqa` -> result.

Never imports or executes the code it checks, and never raises for bad input: every
failure becomes a diagnostic in the returned `FileResult`.
"""

from __future__ import annotations

import io
import re
import tokenize
import unicodedata
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import libcst as cst
from libcst.metadata import MetadataWrapper

from ema_lint.diagnostics import Diagnostic, Location, Severity
from ema_lint.project import ProjectIndex
from ema_lint.registry import tool_code
from ema_lint.rule import FileContext, Rule

SKIP_FILE = re.compile(rb"^[ \t]*#[ \t]*ema-lint:[ \t]*skip-file\b", re.MULTILINE)
NOQA = re.compile(
    r"#\s*noqa(?::[\s]?(?P<codes>[A-Z]+[0-9]+(?:[,\s]+[A-Z]+[0-9]+)*))?", re.IGNORECASE
)


@dataclass
class FileResult:
    path: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    parsed: bool = False
    skipped: bool = False
    # stopped at a per-file time or memory limit: a result of the machine's load, not of the
    # file, so never cached
    limited: bool = False


def tool_diagnostic(code: str, path: str, message: str, line: int = 1, column: int = 1) -> Diagnostic:
    tool = tool_code(code)
    return Diagnostic(
        code=tool.code,
        name=tool.name,
        message=message,
        path=path,
        start=Location(line, column),
        end=Location(line, column),
        severity=tool.severity,
    )


def rules_triggered(
    source: bytes,
    rules: Sequence[type[Rule]],
    project: ProjectIndex | None = None,
    module_name: str = "",
) -> list[type[Rule]]:
    """The rules that could report on `source`.

    Trigger words are ASCII identifiers, and PEP 263 only admits ASCII-compatible
    encodings, so a byte search is exact, with one gap: NFKC normalisation lets a
    non-ASCII spelling (fullwidth letters) name the same identifier. The textual half
    therefore reads a UTF-8 file with non-ASCII bytes after NFKC, as Python reads its
    identifiers (normalising only adds ASCII, never removes it); a file in another
    encoding skips the textual half. The structural half reads `ast` facts, which hold
    for any spelling.
    """
    project = project or ProjectIndex()
    textual = source if source.isascii() else _nfkc_utf8(source)
    return [
        rule
        for rule in rules
        if rule.structurally_possible(project, module_name)
        and (textual is None or rule.could_report(textual, project, module_name))
    ]


def _nfkc_utf8(source: bytes) -> bytes | None:
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        if encoding not in ("utf-8", "utf-8-sig"):
            return None
        return unicodedata.normalize("NFKC", source.decode(encoding)).encode("utf-8")
    except (SyntaxError, UnicodeDecodeError):
        return None


def undecodable(path: str, source: bytes) -> Diagnostic | None:
    """EMA004 when `source` is not text Python could read: NUL bytes, an unknown declared
    encoding, or bytes invalid in the declared (PEP 263 / BOM) or default UTF-8 encoding."""
    if b"\x00" in source:
        line = source.count(b"\n", 0, source.index(b"\x00")) + 1
        return tool_diagnostic("EMA004", path, "file contains a NUL byte; not Python source", line)
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        source.decode(encoding)
    except LookupError as error:  # `# coding: hex`: a codec, but not a text encoding
        return tool_diagnostic("EMA004", path, f"cannot decode: {error}")
    except SyntaxError as error:
        return tool_diagnostic("EMA004", path, f"cannot decode: {error.msg if hasattr(error, 'msg') else error}")
    except UnicodeDecodeError as error:
        line = source.count(b"\n", 0, error.start) + 1
        column = error.start - (source.rfind(b"\n", 0, error.start) + 1) + 1
        return tool_diagnostic(
            "EMA004", path, f"cannot decode as {encoding}: {error.reason} (byte {source[error.start]:#04x})", line, column
        )
    return None


def parse(path: str, source: bytes) -> cst.Module | Diagnostic:
    problem = undecodable(path, source)
    if problem is not None:
        return problem
    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as error:
        message = " ".join(error.message.split())
        return tool_diagnostic(
            "EMA001", path, f"cannot parse: {message}", error.raw_line, error.raw_column + 1
        )
    except (UnicodeDecodeError, LookupError, SyntaxError) as error:
        return tool_diagnostic("EMA004", path, f"cannot decode: {error}")
    except cst.CSTLogicError as error:
        # the parser read the file but cannot build its tree (libcst 1.9 rejects concatenated
        # template strings, valid in 3.14): the file cannot be checked, which is no checker bug
        return tool_diagnostic("EMA001", path, f"cannot parse: libcst cannot represent this file ({error})")


def check_source(
    path: str,
    source: bytes,
    rules: Sequence[type[Rule]],
    project: ProjectIndex | None = None,
    module_name: str = "",
    *,
    honour_noqa: bool = True,
) -> FileResult:
    """`honour_noqa=False` keeps findings a `# noqa` comment covers, for hosts such as
    flake8 that apply their own `# noqa` (and `--disable-noqa`)."""
    result, triggered = triage(path, source, rules, project, module_name)
    if not triggered:
        return result
    module = parse(path, source)
    if isinstance(module, Diagnostic):
        result.diagnostics.append(module)
        return result
    result.parsed = True
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    text = source.decode(tokenize.detect_encoding(io.BytesIO(source).readline)[0])
    context = FileContext(path, module_name, module, project or ProjectIndex(), text, wrapper)
    for rule in triggered:
        for kind in rule.COLLECTORS:
            if kind not in context.collectors:
                context.collectors[kind] = kind()
    visitors = [rule(context) for rule in triggered]
    wrapper.visit_batched([*context.collectors.values(), *visitors])
    comments = comments_by_line(text) if any(v.diagnostics for v in visitors) else {}
    kept = {
        id(visitor): [d for d in visitor.diagnostics if not (honour_noqa and is_suppressed(d, comments))]
        for visitor in visitors
    }
    # only a finding that is shown supersedes another (EMA301 suppressed by noqa leaves the EMA203)
    shown = [d for found in kept.values() for d in found]
    for visitor in visitors:
        result.diagnostics.extend(d for d in kept[id(visitor)] if not _superseded(d, visitor.SUPERSEDED_BY, shown))
    result.diagnostics.sort(key=Diagnostic.sort_key)
    return result


def _superseded(diagnostic: Diagnostic, by: Sequence[str], found: Sequence[Diagnostic]) -> bool:
    return any(
        other.code in by and other.start <= diagnostic.start and diagnostic.end <= other.end for other in found
    )


def _skip_file_comment(source: bytes) -> bool:
    """The `# ema-lint: skip-file` the pattern found is a comment, not text in a docstring."""
    try:
        text = source.decode(tokenize.detect_encoding(io.BytesIO(source).readline)[0])
    except (SyntaxError, UnicodeDecodeError, LookupError):
        return True
    return any(SKIP_FILE.search(comment.encode()) for comment in comments_by_line(text).values())


def triage(
    path: str,
    source: bytes,
    rules: Sequence[type[Rule]],
    project: ProjectIndex | None = None,
    module_name: str = "",
) -> tuple[FileResult, list[type[Rule]]]:
    """The start of a file's result and the rules to run on it. With no rule to run, the
    result is final: the file need not be parsed, nor sent to a worker process."""
    result = FileResult(path)
    if SKIP_FILE.search(source) and _skip_file_comment(source):
        result.skipped = True
        return result, []
    return result, rules_triggered(source, rules, project, module_name)


def comments_by_line(text: str) -> dict[int, str]:
    """The comment on each line (1-based) of `text`, from the tokenizer: `# noqa` inside a
    string is no comment."""
    comments: dict[int, str] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = token.string
    except (tokenize.TokenError, SyntaxError):
        pass  # what was read before the error still counts
    return comments


def is_suppressed(diagnostic: Diagnostic, comments: Mapping[int, str]) -> bool:
    """`# noqa` or `# noqa: CODE[, CODE]` in a comment on the first or last line of the finding."""
    for line_number in {diagnostic.start.line, diagnostic.end.line}:
        if line_number not in comments:
            continue
        match = NOQA.search(comments[line_number])
        if match is None:
            continue
        codes = match.group("codes")
        if codes is None or diagnostic.code in re.split(r"[,\s]+", codes.upper()):
            return True
    return False


def severity_at_least(diagnostic: Diagnostic, floor: Severity) -> bool:
    return diagnostic.severity.rank >= floor.rank
