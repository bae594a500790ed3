"""Adding the imports a fix needs: once, at module level, in the file's own style.

An import counts as present only when a plain top-level statement makes it (an import
under `if TYPE_CHECKING:` or inside a function binds nothing where the fix runs). A new
`from m import n` joins an existing one-line `from m import ...` statement; anything
else goes on its own line after the file's leading imports (so after any docstring and
`from __future__` import), ended with the file's newline.
"""

from __future__ import annotations

from typing import Iterable

import libcst as cst
from libcst.helpers import get_full_name_for_node
from libcst.metadata import GlobalScope, MetadataWrapper, PositionProvider, ScopeProvider

from ema_lint.diagnostics import Edit, Location, RequiredImport
from ema_lint.fixes import apply_edits, line_starts


class ImportConflict(ValueError):
    """A name the fix needs is already bound at module level to something else."""


def import_statement(required: RequiredImport) -> str:
    if required.name is None:
        return f"import {required.module}"
    return f"from {required.module} import {required.name}"


def add_required_imports(text: str, imports: Iterable[RequiredImport], newline: str) -> str:
    """`text` with every import in `imports` that it lacks added; raises ImportConflict."""
    wanted = list(dict.fromkeys(imports))
    if not wanted:
        return text
    module = cst.parse_module(text)
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    positions = wrapper.resolve(PositionProvider)
    global_scope = next(
        (scope for scope in wrapper.resolve(ScopeProvider).values() if isinstance(scope, GlobalScope)),
        None,
    )
    top_level = _top_level_imports(module)
    missing = [r for r in wanted if not _is_present(r, top_level)]
    for required in missing:
        bound = required.name or required.module.partition(".")[0]
        if global_scope is not None and global_scope.assignments[bound]:
            raise ImportConflict(
                f"cannot add `{import_statement(required)}`: `{bound}` is already bound at module level"
            )

    edits: list[Edit] = []
    new_lines: list[str] = []
    merged: dict[cst.ImportFrom, list[str]] = {}
    for required in missing:
        target = _one_line_from_import(required.module, top_level, positions) if required.name else None
        if target is None:
            new_lines.append(import_statement(required))
        else:
            merged.setdefault(target, []).append(required.name)
    for node, names in merged.items():
        code_range = positions[node]
        edits.append(
            Edit(
                Location(code_range.start.line, code_range.start.column + 1),
                Location(code_range.end.line, code_range.end.column + 1),
                module.code_for_node(_with_names(node, names)),
            )
        )
    if new_lines:
        edits.append(_insertion(module, positions, text, [line + newline for line in new_lines], newline))
    return apply_edits(text, edits)


def _top_level_imports(module: cst.Module) -> list[cst.Import | cst.ImportFrom]:
    return [
        small
        for statement in module.body
        if isinstance(statement, cst.SimpleStatementLine)
        for small in statement.body
        if isinstance(small, (cst.Import, cst.ImportFrom))
    ]


def _is_present(required: RequiredImport, top_level: list[cst.Import | cst.ImportFrom]) -> bool:
    for node in top_level:
        if required.name is None and isinstance(node, cst.Import):
            for alias in node.names:
                name = get_full_name_for_node(alias.name) or ""
                unaliased = alias.asname is None or _alias_name(alias) == name
                if unaliased and (name == required.module or name.startswith(required.module + ".")):
                    return True
        elif (
            required.name is not None
            and isinstance(node, cst.ImportFrom)
            and not node.relative
            and node.module is not None
            and get_full_name_for_node(node.module) == required.module
            and not isinstance(node.names, cst.ImportStar)
        ):
            for alias in node.names:
                if alias.name.value == required.name and _alias_name(alias) in (None, required.name):
                    return True
    return False


def _alias_name(alias: cst.ImportAlias) -> str | None:
    if alias.asname is None:
        return None
    return get_full_name_for_node(alias.asname.name)


def _one_line_from_import(module_name, top_level, positions) -> cst.ImportFrom | None:
    for node in top_level:
        if (
            isinstance(node, cst.ImportFrom)
            and not node.relative
            and node.module is not None
            and get_full_name_for_node(node.module) == module_name
            and not isinstance(node.names, cst.ImportStar)
            and node.lpar is None
            and positions[node].start.line == positions[node].end.line
        ):
            return node
    return None


def _with_names(node: cst.ImportFrom, names: list[str]) -> cst.ImportFrom:
    aliases = list(node.names)
    last = aliases[-1]
    aliases[-1] = last.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    for i, name in enumerate(names):
        comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")) if i < len(names) - 1 else last.comma
        aliases.append(cst.ImportAlias(name=cst.Name(name), comma=comma))
    return node.with_changes(names=aliases)


def _insertion(module: cst.Module, positions, text: str, lines: list[str], newline: str) -> Edit:
    """An edit putting `lines` after the leading docstring and imports, or before the first statement."""
    last_import_line = None
    for index, statement in enumerate(module.body):
        is_docstring = index == 0 and _is_docstring(statement)
        is_import_line = isinstance(statement, cst.SimpleStatementLine) and all(
            isinstance(small, (cst.Import, cst.ImportFrom)) for small in statement.body
        )
        if not (is_docstring or is_import_line):
            break
        last_import_line = positions[statement].end.line
    if last_import_line is None:
        if not module.body:
            at = _end_of(text)
            prefix = newline if text and not text.endswith(("\n", "\r")) else ""
            return Edit(at, at, prefix + "".join(lines))
        first = module.body[0]
        # a decorated definition's position starts at `def`/`class`; its decorators come first
        decorators = getattr(first, "decorators", ())
        start = positions[decorators[0] if decorators else first].start.line
        at = Location(start - len(first.leading_lines), 1)
        return Edit(at, at, "".join(lines))
    if last_import_line >= len(line_starts(text)):
        # the import line is the last one and has no newline: end it before adding ours
        at = _end_of(text)
        return Edit(at, at, newline + "".join(lines).removesuffix(newline))
    at = Location(last_import_line + 1, 1)
    return Edit(at, at, "".join(lines))


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
        and isinstance(statement.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
    )


def _end_of(text: str) -> Location:
    starts = line_starts(text)
    return Location(len(starts), len(text) - starts[-1] + 1)
